"""Compare the COCO APs of a GC run with those of its baseline twin.

Inputs are what ``tools/test.py`` leaves behind: a work dir holding
``test_metrics.json`` or that file itself (see :mod:`mmgc.runtime.metrics`).
A training work dir without that file is read too: the last validation's
metrics in ``<timestamp>/vis_data/scalars.json``, with the config that
MMEngine dumped next to it.

Before comparing, the two runs' merged configs are checked: they may differ
only in the optimizer (see :data:`OPTIMIZER_KEYS`) and in settings that say
where and how a run was launched, not what it computed
(:data:`RUN_LOCAL_KEYS`). Anything else (a learning rate, a batch size, a
seed, AMP, a data root) makes the comparison meaningless and raises
:class:`ConfigMismatchError` naming the keys.

APs are shown in percent (CocoMetric's value x 100), like the paper. The
paper's delta (w/ GC minus w/o GC) comes from ``configs/metafile.yml``; it
exists for AP, AP50 and AP75 of the paper's configs and is ``n/a``
elsewhere.
"""

from __future__ import annotations

import csv
import glob
import json
import math
import os
import os.path as osp
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

from mmengine.config import Config

from mmgc.runtime.metrics import METRICS_FILENAME, read_metrics_file

__all__ = [
    'METRICS',
    'OPTIMIZER_KEYS',
    'RUN_LOCAL_KEYS',
    'TASKS',
    'ComparisonRow',
    'ConfigMismatchError',
    'RunResult',
    'compare_runs',
    'config_differences',
    'load_run',
    'paper_deltas',
    'plot_deltas',
    'rows_to_csv',
    'rows_to_markdown',
    'rows_to_text',
    'write_report',
]

#: COCO tasks: CocoMetric's prefix -> the metafile's AP prefix.
TASKS = {'bbox': 'box', 'segm': 'mask'}

#: Metric label -> CocoMetric's key suffix (``coco/<task>_<suffix>``).
METRICS = {
    'AP': 'mAP',
    'AP50': 'mAP_50',
    'AP75': 'mAP_75',
    'APs': 'mAP_s',
    'APm': 'mAP_m',
    'APl': 'mAP_l',
}

#: Keys in which a GC config may differ from its baseline: what the GC
#: configs change (issue 3's twins differ exactly here).
OPTIMIZER_KEYS = (
    'custom_imports',
    'optim_wrapper.optimizer.type',
    'optim_wrapper.constructor',
    'optim_wrapper.paramwise_cfg.gc_layers',
)

#: Keys that say where and how a run was launched or tested, not what it
#: computed: output folder, launcher, checkpoint to start from, process
#: environment (distributed backend, cuDNN flags), the DDP wrapper
#: (tools/train.py picks a CPU one without CUDA) and test-time drawing.
RUN_LOCAL_KEYS = (
    'work_dir',
    'launcher',
    'load_from',
    'resume',
    'env_cfg',
    'model_wrapper_cfg',
    'default_hooks.visualization',
)

_SCALARS_GLOB = osp.join('*', 'vis_data', 'scalars.json')


class ConfigMismatchError(ValueError):
    """Two runs' configs differ in more than the optimizer."""


@dataclass
class RunResult:
    """The metrics of one run and the config that produced them."""

    #: Where they were read from (a file).
    source: str
    #: CocoMetric's keys, e.g. ``coco/bbox_mAP`` (fractions, not percent).
    metrics: dict[str, Any]
    #: The merged config, if one was found.
    config: Optional[Config] = None
    #: The config's name (file stem), used to look up the metafile.
    config_name: Optional[str] = None

    def ap(self, task: str, metric: str) -> Optional[float]:
        """``task``'s ``metric`` in percent, or None if absent or negative."""
        value = self.metrics.get(f'coco/{task}_{METRICS[metric]}')
        if value is None or isinstance(value, str):
            return None
        value = float(value)
        if not math.isfinite(value) or value < 0:  # COCO's -1: no such objects
            return None
        return value * 100.0


@dataclass
class ComparisonRow:
    """One metric of one task."""

    task: str
    metric: str
    gc: Optional[float]
    baseline: Optional[float]
    paper_delta: Optional[float] = None
    delta: Optional[float] = field(init=False)

    def __post_init__(self) -> None:
        self.delta = (
            None if self.gc is None or self.baseline is None else round(self.gc - self.baseline, 6)
        )


# --------------------------------------------------------------------- input


def _config_from_dir(work_dir: str) -> tuple[Optional[Config], Optional[str]]:
    """The config MMEngine dumped into ``work_dir`` (its only ``*.py``)."""
    dumped = sorted(glob.glob(osp.join(work_dir, '*.py')))
    if len(dumped) != 1:
        return None, None
    return Config.fromfile(dumped[0]), osp.splitext(osp.basename(dumped[0]))[0]


def _last_val_metrics(work_dir: str) -> Optional[tuple[str, dict[str, Any]]]:
    """The newest ``coco/*`` scalars logged during training, if any."""
    for path in sorted(glob.glob(osp.join(work_dir, _SCALARS_GLOB)), reverse=True):
        last: Optional[dict[str, Any]] = None
        with open(path, encoding='utf-8') as f:
            for line in f:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if any(str(k).startswith('coco/') for k in record):
                    last = record
        if last is not None:
            return path, {k: v for k, v in last.items() if k.startswith('coco/')}
    return None


def load_run(path: str, config: Optional[str] = None) -> RunResult:
    """Read a run's metrics and config.

    Args:
        path (str): A metrics file written by ``tools/test.py``, or a work
            dir holding one (else the last validation of a training run).
        config (str, optional): A config file to use instead of the one
            recorded with the run.

    Returns:
        RunResult: The run's metrics and, if found, its config.

    Raises:
        FileNotFoundError: If ``path`` does not exist or holds no metrics.
        ValueError: If a metrics file is malformed.
    """
    cfg: Optional[Config] = None
    name: Optional[str] = None
    if osp.isdir(path):
        metrics_file = osp.join(path, METRICS_FILENAME)
        if osp.isfile(metrics_file):
            run = _run_from_file(metrics_file)
        else:
            found = _last_val_metrics(path)
            if found is None:
                raise FileNotFoundError(
                    f"Work dir '{path}' holds neither {METRICS_FILENAME} (run "
                    'tools/test.py with --work-dir there) nor validation '
                    'metrics in */vis_data/scalars.json.'
                )
            cfg, name = _config_from_dir(path)
            run = RunResult(found[0], found[1], cfg, name)
    elif osp.isfile(path):
        run = _run_from_file(path)
    else:
        raise FileNotFoundError(f"'{path}' is neither a work dir nor a metrics file.")
    if config is not None:
        if not osp.isfile(config):
            raise FileNotFoundError(f"Config file '{config}' does not exist.")
        run.config = Config.fromfile(config)
        run.config_name = osp.splitext(osp.basename(config))[0]
    return run


def _run_from_file(path: str) -> RunResult:
    record = read_metrics_file(path)
    cfg: Optional[Config] = None
    text = record.get('config_text')
    if isinstance(text, str) and text.strip():
        cfg = Config.fromstring(text, file_format='.py')
    name = record.get('config')
    if isinstance(name, str) and name:
        name = osp.splitext(osp.basename(name))[0]
    else:
        name = None
    if cfg is None:
        cfg, dumped_name = _config_from_dir(osp.dirname(osp.abspath(path)))
        name = name or dumped_name
    return RunResult(path, dict(record['metrics']), cfg, name)


# ------------------------------------------------------------ config check


def _plain(value: Any) -> Any:
    """Tuples as lists, config dicts as dicts, recursively."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _as_dict(cfg: Mapping[str, Any]) -> Mapping[str, Any]:
    return cfg.to_dict() if isinstance(cfg, Config) else cfg


def _flatten(value: Any, prefix: str = '') -> dict[str, Any]:
    if isinstance(value, Mapping) and value:
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f'{prefix}.{key}' if prefix else str(key)))
        return out
    return {prefix: value}


def _covered(key: str, prefixes: Iterable[str]) -> bool:
    return any(key == p or key.startswith(p + '.') for p in prefixes)


def config_differences(
    gc_cfg: Mapping[str, Any],
    base_cfg: Mapping[str, Any],
    ignore: Sequence[str] = (),
) -> list[str]:
    """Dotted keys in which two configs differ, beyond the allowed ones.

    Lists are compared whole (a pipeline that differs anywhere is reported
    under its own key). Keys under :data:`OPTIMIZER_KEYS`,
    :data:`RUN_LOCAL_KEYS` and ``ignore`` are not reported.

    Args:
        gc_cfg (Mapping): The GC run's merged config.
        base_cfg (Mapping): The baseline run's merged config.
        ignore (Sequence[str]): More dotted keys (or key prefixes) to skip.

    Returns:
        list[str]: Sorted keys; empty when the runs are comparable.
    """
    flat_gc = _flatten(_plain(_as_dict(gc_cfg)))
    flat_base = _flatten(_plain(_as_dict(base_cfg)))
    allowed = (*OPTIMIZER_KEYS, *RUN_LOCAL_KEYS, *ignore)
    missing = object()
    return sorted(
        key
        for key in set(flat_gc) | set(flat_base)
        if not _covered(key, allowed) and flat_gc.get(key, missing) != flat_base.get(key, missing)
    )


def check_comparable(gc: RunResult, base: RunResult, ignore: Sequence[str] = ()) -> None:
    """Raise unless the two runs' configs differ only in the optimizer.

    Raises:
        ConfigMismatchError: Naming the differing keys, or the run whose
            config could not be found.
    """
    for run, flag in ((gc, '--gc-config'), (base, '--base-config')):
        if run.config is None:
            raise ConfigMismatchError(
                f"No config found for '{run.source}', so it cannot be checked "
                f'that the runs differ only in the optimizer; pass {flag}.'
            )
    diff = config_differences(gc.config, base.config, ignore)
    if diff:
        shown = ', '.join(diff[:20]) + (f' (+{len(diff) - 20} more)' if len(diff) > 20 else '')
        raise ConfigMismatchError(
            f"Refusing to compare '{gc.source}' with '{base.source}': their "
            f'configs differ in more than the optimizer, in: {shown}. '
            'Re-run them with equal settings, or pass --ignore-keys for keys '
            'you know do not matter.'
        )


# ---------------------------------------------------------------- metafile


def paper_deltas(metafile: Optional[str], name: Optional[str]) -> dict[tuple[str, str], float]:
    """The paper's AP gains (w/ GC minus w/o GC) for model ``name``.

    Reads MMDetection's model-index form written by issue 3 (see the header
    of ``configs/metafile.yml``): for each model, per ``Results`` entry,
    ``Metrics`` (the paper's AP with GC) and ``Paper Baseline`` (without),
    with keys ``'<box|mask> AP'``, ``'... AP50'``, ``'... AP75'``.
    Anything missing or malformed yields no entry, never an error.

    Args:
        metafile (str, optional): Path of the metafile; None gives ``{}``.
        name (str, optional): The GC config's name (file stem) or path.

    Returns:
        dict: ``{(task, metric): delta}``, task ``'bbox'``/``'segm'``,
        metric ``'AP'``/``'AP50'``/``'AP75'``, in AP points.
    """
    if not metafile or not name or not osp.isfile(metafile):
        return {}
    import yaml

    try:
        with open(metafile, encoding='utf-8') as f:
            index = yaml.safe_load(f)
    except (OSError, yaml.YAMLError):
        return {}
    stem = osp.splitext(osp.basename(name))[0]
    models = index.get('Models') if isinstance(index, Mapping) else None
    for model in models if isinstance(models, list) else []:
        if not isinstance(model, Mapping):
            continue
        config = model.get('Config')
        config_stem = osp.splitext(osp.basename(config))[0] if isinstance(config, str) else None
        if stem not in (model.get('Name'), config_stem):
            continue
        return _deltas_of(model)
    return {}


def _deltas_of(model: Mapping[str, Any]) -> dict[tuple[str, str], float]:
    by_prefix = {prefix: task for task, prefix in TASKS.items()}
    deltas: dict[tuple[str, str], float] = {}
    results = model.get('Results')
    for result in results if isinstance(results, list) else []:
        if not isinstance(result, Mapping):
            continue
        with_gc, without = result.get('Metrics'), result.get('Paper Baseline')
        if not isinstance(with_gc, Mapping) or not isinstance(without, Mapping):
            continue
        for key, value in with_gc.items():
            parts = str(key).split()
            if len(parts) != 2 or parts[0] not in by_prefix or parts[1] not in METRICS:
                continue
            other = without.get(key)
            if isinstance(value, (int, float)) and isinstance(other, (int, float)):
                deltas[(by_prefix[parts[0]], parts[1])] = round(value - other, 6)
    return deltas


# ------------------------------------------------------------------ compare


def compare_runs(
    gc: RunResult,
    base: RunResult,
    *,
    metafile: Optional[str] = None,
    model: Optional[str] = None,
    ignore: Sequence[str] = (),
) -> list[ComparisonRow]:
    """Check that the runs are twins, then pair their APs.

    Args:
        gc (RunResult): The GC run.
        base (RunResult): Its baseline.
        metafile (str, optional): ``configs/metafile.yml`` for the paper's
            deltas.
        model (str, optional): The metafile entry; defaults to the GC run's
            config name.
        ignore (Sequence[str]): Extra config keys allowed to differ.

    Returns:
        list[ComparisonRow]: Per task present in either run, one row per
        metric in :data:`METRICS` order.

    Raises:
        ConfigMismatchError: If the configs differ in more than the optimizer.
        ValueError: If neither run has any COCO bbox or segm metric.
    """
    check_comparable(gc, base, ignore)
    paper = paper_deltas(metafile, model or gc.config_name)
    rows = []
    for task in TASKS:
        if all(gc.ap(task, m) is None and base.ap(task, m) is None for m in METRICS):
            continue
        for metric in METRICS:
            rows.append(
                ComparisonRow(
                    task,
                    metric,
                    gc.ap(task, metric),
                    base.ap(task, metric),
                    paper.get((task, metric)),
                )
            )
    if not rows:
        raise ValueError(
            f"Neither '{gc.source}' nor '{base.source}' holds COCO bbox or segm "
            "metrics (keys 'coco/bbox_mAP', 'coco/segm_mAP', ...)."
        )
    return rows


# ------------------------------------------------------------------ output


def _fmt(value: Optional[float], signed: bool = False) -> str:
    if value is None:
        return 'n/a'
    return f'{value:+.1f}' if signed else f'{value:.1f}'


_HEADER = ('metric', 'GC', 'baseline', 'delta', 'paper delta')


def _table_cells(rows: Sequence[ComparisonRow], task: str) -> list[tuple[str, ...]]:
    return [
        (
            r.metric,
            _fmt(r.gc),
            _fmt(r.baseline),
            _fmt(r.delta, signed=True),
            _fmt(r.paper_delta, signed=True),
        )
        for r in rows
        if r.task == task
    ]


def _tasks(rows: Sequence[ComparisonRow]) -> list[str]:
    return [t for t in TASKS if any(r.task == t for r in rows)]


def rows_to_text(rows: Sequence[ComparisonRow]) -> str:
    """Plain-text tables, one per task, for the console."""
    blocks = []
    for task in _tasks(rows):
        cells = [_HEADER, *_table_cells(rows, task)]
        widths = [max(len(c[i]) for c in cells) for i in range(len(_HEADER))]
        lines = [f'{task} (AP in %)']
        for i, cell in enumerate(cells):
            lines.append(
                '  '.join(
                    c.ljust(w) if j == 0 else c.rjust(w)
                    for j, (c, w) in enumerate(zip(cell, widths))
                )
            )
            if i == 0:
                lines.append('  '.join('-' * w for w in widths))
        blocks.append('\n'.join(lines))
    return '\n\n'.join(blocks)


def rows_to_markdown(
    rows: Sequence[ComparisonRow],
    gc: Optional[RunResult] = None,
    base: Optional[RunResult] = None,
) -> str:
    """Markdown tables, one per task (``### bbox``, ``### segm``)."""
    lines = []
    if gc is not None and base is not None:
        lines += [
            f'GC run: `{gc.source}` ({gc.config_name or "config n/a"}); '
            f'baseline: `{base.source}` ({base.config_name or "config n/a"}).',
            '',
            'COCO AP in percent; delta = GC - baseline; paper delta = the '
            "paper's w/ GC - w/o GC for this config (n/a where the paper has "
            'no such number).',
            '',
        ]
    for task in _tasks(rows):
        lines += [f'### {task}', '']
        lines.append('| ' + ' | '.join(_HEADER) + ' |')
        lines.append('|' + '|'.join(['---'] + ['---:'] * (len(_HEADER) - 1)) + '|')
        for cell in _table_cells(rows, task):
            lines.append('| ' + ' | '.join(cell) + ' |')
        lines.append('')
    return '\n'.join(lines)


def rows_to_csv(rows: Sequence[ComparisonRow], path: str) -> str:
    """Write ``task,metric,gc,baseline,delta,paper_delta`` (empty = n/a)."""
    with open(path, 'w', newline='', encoding='utf-8') as f:
        writer = csv.writer(f)
        writer.writerow(['task', 'metric', 'gc', 'baseline', 'delta', 'paper_delta'])
        for r in rows:
            writer.writerow(
                [
                    r.task,
                    r.metric,
                    *(
                        '' if v is None else f'{v:.3f}'
                        for v in (r.gc, r.baseline, r.delta, r.paper_delta)
                    ),
                ]
            )
    return path


def plot_deltas(rows: Sequence[ComparisonRow], path: str, title: str = '') -> str:
    """Bar chart of the measured (and the paper's) AP deltas, per task.

    Drawn on a bare ``matplotlib.figure.Figure`` (Agg canvas), so no pyplot
    backend is touched. Missing values are drawn as ``n/a`` labels.
    """
    from matplotlib.figure import Figure

    tasks = _tasks(rows)
    fig = Figure(figsize=(5.5 * len(tasks), 3.8))
    axes = fig.subplots(1, len(tasks), squeeze=False)[0]
    width = 0.38
    for ax, task in zip(axes, tasks):
        task_rows = [r for r in rows if r.task == task]
        xs = list(range(len(task_rows)))
        series = [('measured', [r.delta for r in task_rows], -width / 2)]
        if any(r.paper_delta is not None for r in task_rows):
            series.append(('paper', [r.paper_delta for r in task_rows], width / 2))
        else:
            series[0] = ('measured', series[0][1], 0.0)
        for label, values, shift in series:
            bars = ax.bar(
                [x + shift for x in xs],
                [0.0 if v is None else v for v in values],
                width,
                label=label,
            )
            ax.bar_label(
                bars,
                labels=['n/a' if v is None else f'{v:+.1f}' for v in values],
                fontsize=7,
            )
        ax.axhline(0.0, color='black', linewidth=0.8)
        ax.set_xticks(xs)
        ax.set_xticklabels([r.metric for r in task_rows])
        ax.set_ylabel('AP delta (points)')
        ax.set_title(f'{task}: GC - baseline')
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


#: File names :func:`write_report` writes into its folder.
REPORT_FILES = {
    'markdown': 'ap_comparison.md',
    'csv': 'ap_comparison.csv',
    'png': 'ap_deltas.png',
}


def write_report(
    rows: Sequence[ComparisonRow],
    out_dir: str,
    gc: Optional[RunResult] = None,
    base: Optional[RunResult] = None,
) -> dict[str, str]:
    """Write the Markdown, CSV and PNG into ``out_dir`` (created).

    Returns:
        dict: ``{'markdown': path, 'csv': path, 'png': path}``.
    """
    os.makedirs(out_dir, exist_ok=True)
    paths = {kind: osp.join(out_dir, name) for kind, name in REPORT_FILES.items()}
    with open(paths['markdown'], 'w', encoding='utf-8') as f:
        f.write(rows_to_markdown(rows, gc, base))
    rows_to_csv(rows, paths['csv'])
    title = f'{gc.config_name}: GC vs baseline' if gc and gc.config_name else ''
    plot_deltas(rows, paths['png'], title)
    return paths
