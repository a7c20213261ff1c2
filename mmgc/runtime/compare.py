"""Did GC help? Compare GC runs with their baseline twins over seeds.

Inputs are what ``tools/test.py`` leaves behind: a work dir holding
``test_metrics.json`` or that file itself (see :mod:`mmgc.runtime.metrics`).
A training work dir without that file is read too: the last validation's
metrics in ``<timestamp>/vis_data/scalars.json``, with the config that
MMEngine saved beside them.

Each side (GC, baseline) holds one or more runs. A run's config is its
*training* config: the one recorded in the checkpoint that ``tools/test.py``
tested (MMEngine's ``meta['cfg']``), not the test-time config, so an option
given only at training time (``--cfg-options optim_wrapper.optimizer.lr=...``)
is seen. Before comparing, the configs are checked:

- within a side, runs may differ only in the seed (``randomness.seed``) and
  in where and how they were launched (:data:`RUN_LOCAL_KEYS`);
- across the sides, also in the optimizer (:data:`OPTIMIZER_KEYS`).

Anything else (a learning rate, a batch size, AMP, a data root) makes the
comparison meaningless and raises :class:`ConfigMismatchError` naming the
keys. Runs that share a seed are paired; a seed found on one side only is
named and left out.

Per task and metric the comparison gives each side's mean and sample
standard deviation, the paired delta (GC minus baseline) of every seed, their
mean with a confidence interval from Student's t distribution
(:func:`scipy.stats.t.interval`), a verdict read from that interval
(:data:`VERDICTS`), and the paper's delta from ``configs/metafile.yml``.
With one pair the spread is unknown and the verdict says so.

APs are shown in percent (CocoMetric's value x 100), like the paper.
"""

from __future__ import annotations

import csv
import glob
import json
import math
import os
import os.path as osp
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from mmengine.config import Config

from mmgc.runtime.metrics import METRICS_FILENAME, TEST_CONFIG_SUFFIX, read_metrics_file

__all__ = [
    'CONFIDENCE',
    'METRICS',
    'OPTIMIZER_KEYS',
    'REPORT_FILES',
    'RUN_LOCAL_KEYS',
    'SEED_KEY',
    'TASKS',
    'VERDICTS',
    'Comparison',
    'ComparisonRow',
    'ConfigMismatchError',
    'MissingMetricsError',
    'RunPair',
    'RunResult',
    'check_runs',
    'compare_runs',
    'comparison_to_markdown',
    'comparison_to_text',
    'config_differences',
    'delta_figure',
    'load_run',
    'load_runs',
    'metafile_models',
    'paired_interval',
    'paper_deltas',
    'write_csv',
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
#: configs change.
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

#: The config key that runs of one side may differ in, and that pairs runs.
SEED_KEY = 'randomness.seed'

#: Confidence level of the interval around the mean paired delta.
CONFIDENCE = 0.95

#: The verdicts, read from the interval: above zero, containing zero, below.
VERDICTS = ('GC higher', 'no clear difference', 'GC lower')
#: The verdict when there is a single pair, so no spread to judge by.
SPREAD_UNKNOWN = 'spread unknown (1 seed)'

_SCALARS_GLOB = osp.join('*', 'vis_data', 'scalars.json')

Seed = Optional[int]


class ConfigMismatchError(ValueError):
    """Runs' configs differ in more than they may."""


class MissingMetricsError(FileNotFoundError):
    """A run's folder exists but holds no COCO metrics (yet)."""


@dataclass
class RunResult:
    """The metrics of one run and the training config that produced them."""

    #: Where they were read from (a file).
    source: str
    #: CocoMetric's keys, e.g. ``coco/bbox_mAP`` (fractions, not percent).
    metrics: dict[str, Any]
    #: The run's training config, if one was found.
    config: Optional[Config] = None
    #: The config's name (file stem), used to look up the metafile.
    config_name: Optional[str] = None
    #: The run's seed: the config's ``randomness.seed``, else the one the
    #: checkpoint recorded (MMEngine draws one when the config has none).
    seed: Seed = None
    #: Where the config came from, for messages.
    config_origin: str = ''

    def __post_init__(self) -> None:
        if self.seed is None:
            self.seed = _config_seed(self.config)

    def ap(self, task: str, metric: str) -> Optional[float]:
        """``task``'s ``metric`` in percent, or None if absent or negative."""
        value = self.metrics.get(f'coco/{task}_{METRICS[metric]}')
        if value is None or isinstance(value, (str, bool)):
            return None
        value = float(value)
        if not math.isfinite(value) or value < 0:  # COCO's -1: no such objects
            return None
        return value * 100.0

    def has_coco_metrics(self) -> bool:
        """Whether any bbox or segm AP is present."""
        return any(self.ap(t, m) is not None for t in TASKS for m in METRICS)


# --------------------------------------------------------------------- input


def _read_config(path: str) -> Config:
    """A config file as a dict: its ``custom_imports`` are not imported.

    The comparison needs the values only; a run's plugin modules need not be
    importable where the runs are compared.
    """
    return Config.fromfile(path, import_custom_modules=False)


def _parse_config(text: str) -> Config:
    """A config's text (``Config.pretty_text``) as a dict, as :func:`_read_config`."""
    with tempfile.TemporaryDirectory() as folder:
        path = osp.join(folder, 'config.py')
        with open(path, 'w', encoding='utf-8') as f:
            f.write(text)
        return _read_config(path)


def _config_seed(cfg: Optional[Config]) -> Seed:
    """The config's ``randomness.seed`` if it is an int."""
    seed = ((cfg.get('randomness') if cfg is not None else None) or {}).get('seed')
    return seed if isinstance(seed, int) and not isinstance(seed, bool) else None


def _dumped_config_name(work_dir: str) -> Optional[str]:
    """The stem of the training config MMEngine dumped into ``work_dir``."""
    dumped = [
        p
        for p in sorted(glob.glob(osp.join(work_dir, '*.py')))
        if not p.endswith(TEST_CONFIG_SUFFIX)
    ]
    return osp.splitext(osp.basename(dumped[0]))[0] if len(dumped) == 1 else None


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


def _run_from_work_dir(work_dir: str) -> RunResult:
    """The last validation of a training run and the config beside it."""
    found = _last_val_metrics(work_dir)
    if found is None:
        raise MissingMetricsError(
            f"Work dir '{work_dir}' holds neither {METRICS_FILENAME} (run "
            'tools/test.py with --work-dir there) nor validation metrics in '
            '*/vis_data/scalars.json.'
        )
    scalars, metrics = found
    # MMEngine's LocalVisBackend saves the run's config beside its scalars.
    beside = osp.join(osp.dirname(scalars), 'config.py')
    name = _dumped_config_name(work_dir)
    if osp.isfile(beside):
        return RunResult(scalars, metrics, _read_config(beside), name, config_origin=beside)
    if name is not None:
        dumped = osp.join(work_dir, f'{name}.py')
        return RunResult(scalars, metrics, _read_config(dumped), name, config_origin=dumped)
    return RunResult(scalars, metrics, None, None)


def _run_from_file(path: str) -> RunResult:
    record = read_metrics_file(path)
    name = record.get('config')
    name = osp.splitext(osp.basename(name))[0] if isinstance(name, str) and name else None
    seed = record.get('seed')
    seed = seed if isinstance(seed, int) and not isinstance(seed, bool) else None
    for key, origin in (
        ('train_config_text', f"the training config recorded in '{path}'"),
        ('config_text', f"the test-time config recorded in '{path}'"),
    ):
        text = record.get(key)
        if isinstance(text, str) and text.strip():
            cfg = _parse_config(text)
            return RunResult(path, dict(record['metrics']), cfg, name, seed, origin)
    work_dir = osp.dirname(osp.abspath(path))
    name = name or _dumped_config_name(work_dir)
    if name is not None and osp.isfile(osp.join(work_dir, f'{name}.py')):
        dumped = osp.join(work_dir, f'{name}.py')
        return RunResult(path, dict(record['metrics']), _read_config(dumped), name, seed, dumped)
    return RunResult(path, dict(record['metrics']), None, name, seed)


def load_run(path: str, config: Optional[str] = None) -> RunResult:
    """Read a run's metrics and training config.

    Args:
        path (str): A metrics file written by ``tools/test.py``, or a work
            dir holding one (else the last validation of a training run).
        config (str, optional): A config file to use instead of the one
            recorded with the run.

    Returns:
        RunResult: The run's metrics and, if found, its config and seed.

    Raises:
        FileNotFoundError: If ``path`` or ``config`` does not exist.
        MissingMetricsError: If ``path`` is a work dir without metrics, or
            its metrics hold no COCO bbox or segm AP.
        ValueError: If a metrics file is malformed.
    """
    if osp.isdir(path):
        metrics_file = osp.join(path, METRICS_FILENAME)
        run = _run_from_file(metrics_file) if osp.isfile(metrics_file) else _run_from_work_dir(path)
    elif osp.isfile(path):
        run = _run_from_file(path)
    else:
        raise FileNotFoundError(f"'{path}' is neither a work dir nor a metrics file.")
    if not run.has_coco_metrics():
        raise MissingMetricsError(
            f"'{run.source}' holds no COCO bbox or segm metrics (keys "
            "'coco/bbox_mAP', 'coco/segm_mAP', ...)."
        )
    if config is not None:
        if not osp.isfile(config):
            raise FileNotFoundError(f"Config file '{config}' does not exist.")
        run.config = _read_config(config)
        run.config_name = osp.splitext(osp.basename(config))[0]
        run.config_origin = config
        run.seed = run.seed if run.seed is not None else _config_seed(run.config)
    return run


def load_runs(
    paths: Sequence[str], config: Optional[str] = None
) -> tuple[list[RunResult], list[tuple[str, str]]]:
    """Read several runs; those without metrics are named, not read.

    Args:
        paths (Sequence[str]): Work dirs or metrics files.
        config (str, optional): A config file for every run (see
            :func:`load_run`).

    Returns:
        tuple: The runs read, and ``(path, reason)`` of each run left out
        because it holds no metrics (e.g. a run still training).

    Raises:
        FileNotFoundError: If a path does not exist at all.
        ValueError: If a metrics file is malformed.
    """
    runs, skipped = [], []
    for path in paths:
        try:
            runs.append(load_run(path, config))
        except MissingMetricsError as err:
            skipped.append((path, str(err)))
    return runs, skipped


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
    first: Mapping[str, Any],
    second: Mapping[str, Any],
    ignore: Sequence[str] = (),
    allowed: Sequence[str] = (*OPTIMIZER_KEYS, *RUN_LOCAL_KEYS),
) -> list[str]:
    """Dotted keys in which two configs differ, beyond the allowed ones.

    Lists are compared whole (a pipeline that differs anywhere is reported
    under its own key).

    Args:
        first (Mapping): A merged config (e.g. the GC run's).
        second (Mapping): Another (e.g. the baseline run's).
        ignore (Sequence[str]): More dotted keys (or key prefixes) to skip.
        allowed (Sequence[str]): Keys (or prefixes) allowed to differ.
            Defaults to :data:`OPTIMIZER_KEYS` and :data:`RUN_LOCAL_KEYS`.

    Returns:
        list[str]: Sorted keys; empty when the configs are comparable.
    """
    flat_a = _flatten(_plain(_as_dict(first)))
    flat_b = _flatten(_plain(_as_dict(second)))
    skip = (*allowed, *ignore)
    missing = object()
    return sorted(
        key
        for key in set(flat_a) | set(flat_b)
        if not _covered(key, skip) and flat_a.get(key, missing) != flat_b.get(key, missing)
    )


def _shown(keys: Sequence[str]) -> str:
    return ', '.join(keys[:20]) + (f' (+{len(keys) - 20} more)' if len(keys) > 20 else '')


def check_runs(
    gc_runs: Sequence[RunResult], base_runs: Sequence[RunResult], ignore: Sequence[str] = ()
) -> None:
    """Raise unless the runs' configs differ only as they may.

    Within a side: in the seed and the run-local keys. Across the sides:
    also in the optimizer.

    Args:
        gc_runs (Sequence[RunResult]): The GC side (at least one run).
        base_runs (Sequence[RunResult]): The baseline side (at least one).
        ignore (Sequence[str]): More dotted keys allowed to differ.

    Raises:
        ConfigMismatchError: Naming the two runs and the differing keys, or
            the run whose config could not be found.
    """
    for runs, flag in ((gc_runs, '--gc-config'), (base_runs, '--base-config')):
        for run in runs:
            if run.config is None:
                raise ConfigMismatchError(
                    f"No config found for '{run.source}', so it cannot be checked "
                    f'that the runs differ only in the optimizer and the seed; pass {flag}.'
                )
    within = (*RUN_LOCAL_KEYS, SEED_KEY)
    for runs, side in ((gc_runs, 'GC'), (base_runs, 'baseline')):
        for run in runs[1:]:
            diff = config_differences(runs[0].config, run.config, ignore, within)
            if diff:
                raise ConfigMismatchError(
                    f"Refusing to compare: the {side} runs '{runs[0].source}' and "
                    f"'{run.source}' differ in more than the seed, in: {_shown(diff)}. "
                    'Runs of one side must share their config except the seed; '
                    'pass --ignore-keys for keys you know do not matter.'
                )
    diff = config_differences(
        gc_runs[0].config, base_runs[0].config, ignore, (*OPTIMIZER_KEYS, *within)
    )
    if diff:
        raise ConfigMismatchError(
            f"Refusing to compare '{gc_runs[0].source}' with '{base_runs[0].source}': "
            f'their configs differ in more than the optimizer, in: {_shown(diff)}. '
            'Re-run them with equal settings, or pass --ignore-keys for keys '
            'you know do not matter.'
        )


# ---------------------------------------------------------------- metafile


def metafile_models(metafile: str) -> dict[str, Mapping[str, Any]]:
    """The metafile's models by name (and by their config's file stem).

    Args:
        metafile (str): Path of ``configs/metafile.yml`` (MMDetection's
            model-index form; see its header).

    Returns:
        dict: ``{name: model entry}``; empty for a missing or malformed file.
    """
    import yaml

    if not osp.isfile(metafile):
        return {}
    try:
        with open(metafile, encoding='utf-8') as f:
            index = yaml.safe_load(f)
    except (OSError, yaml.YAMLError):
        return {}
    models = index.get('Models') if isinstance(index, Mapping) else None
    out: dict[str, Mapping[str, Any]] = {}
    for model in models if isinstance(models, list) else []:
        if not isinstance(model, Mapping):
            continue
        name, config = model.get('Name'), model.get('Config')
        if isinstance(config, str):
            out.setdefault(osp.splitext(osp.basename(config))[0], model)
        if isinstance(name, str):
            out[name] = model
    return out


def paper_deltas(
    metafile: Optional[str], name: Optional[str], *, required: bool = False
) -> dict[tuple[str, str], float]:
    """The paper's AP gains (w/ GC minus w/o GC) for model ``name``.

    For each of the model's ``Results``: ``Metrics`` (the paper's AP with
    GC) minus ``Paper Baseline`` (without), keys ``'<box|mask> AP'``,
    ``'... AP50'``, ``'... AP75'``.

    Args:
        metafile (str, optional): Path of the metafile; None gives ``{}``.
        name (str, optional): The GC config's name (file stem) or path.
        required (bool): Raise if ``name`` is not in the metafile (a name
            the user asked for); otherwise give ``{}``.

    Returns:
        dict: ``{(task, metric): delta}``, task ``'bbox'``/``'segm'``,
        metric ``'AP'``/``'AP50'``/``'AP75'``, in AP points.

    Raises:
        ValueError: If ``required`` and the metafile does not exist or has
            no model ``name``; the message lists the valid names.
    """
    if not name:
        return {}
    stem = osp.splitext(osp.basename(name))[0]
    models = metafile_models(metafile) if metafile else {}
    if stem in models:
        return _deltas_of(models[stem])
    if required:
        if not metafile or not osp.isfile(metafile):
            raise ValueError(f"--model {name!r} needs a metafile; '{metafile}' does not exist.")
        valid = sorted({m['Name'] for m in models.values() if isinstance(m.get('Name'), str)})
        raise ValueError(
            f'--model {name!r} is not in {metafile}; valid names: {", ".join(valid) or "none"}.'
        )
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


# -------------------------------------------------------------- statistics


def _mean(values: Sequence[float]) -> Optional[float]:
    return sum(values) / len(values) if values else None


def _std(values: Sequence[float]) -> Optional[float]:
    """Sample standard deviation (n - 1); None for fewer than two values."""
    if len(values) < 2:
        return None
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def paired_interval(
    deltas: Sequence[float], confidence: float = CONFIDENCE
) -> Optional[tuple[float, float]]:
    """Confidence interval of the mean of paired deltas (Student's t).

    Args:
        deltas (Sequence[float]): One delta per pair.
        confidence (float): The level, in (0, 1). Defaults to 0.95.

    Returns:
        tuple | None: ``(low, high)``; None for fewer than two deltas (no
        spread to estimate). Equal deltas give a zero-width interval.

    Raises:
        ValueError: If ``confidence`` is not in (0, 1).
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f'confidence must be in (0, 1); got {confidence!r}')
    if len(deltas) < 2:
        return None
    mean, std = _mean(deltas), _std(deltas)
    if std == 0.0:
        return (mean, mean)
    from scipy import stats

    low, high = stats.t.interval(
        confidence, df=len(deltas) - 1, loc=mean, scale=std / math.sqrt(len(deltas))
    )
    return (float(low), float(high))


def _verdict(interval: Optional[tuple[float, float]], pairs: int) -> str:
    if pairs == 0:
        return 'n/a'
    if interval is None:
        return SPREAD_UNKNOWN
    low, high = interval
    if low > 0:
        return VERDICTS[0]
    if high < 0:
        return VERDICTS[2]
    return VERDICTS[1]


# ------------------------------------------------------------------ compare


@dataclass
class RunPair:
    """A GC run and the baseline run with the same seed."""

    seed: Seed
    gc: RunResult
    base: RunResult


@dataclass
class ComparisonRow:
    """One metric of one task over all pairs.

    Only paired runs count: ``gc_values`` and ``base_values`` map each
    seed to that run's AP (percent), for the runs where COCOeval had data.
    """

    task: str
    metric: str
    gc_values: dict[Seed, float]
    base_values: dict[Seed, float]
    paper_delta: Optional[float] = None
    confidence: float = CONFIDENCE
    #: Mean AP of each side (None without values).
    gc: Optional[float] = field(init=False)
    baseline: Optional[float] = field(init=False)
    #: Sample standard deviation of each side (None with fewer than 2 runs).
    gc_std: Optional[float] = field(init=False)
    baseline_std: Optional[float] = field(init=False)
    #: GC minus baseline, per seed where both have a value.
    seed_deltas: dict[Seed, float] = field(init=False)
    #: Mean of ``seed_deltas``.
    delta: Optional[float] = field(init=False)
    #: Its confidence interval (None with fewer than two pairs).
    interval: Optional[tuple[float, float]] = field(init=False)
    #: One of :data:`VERDICTS`, :data:`SPREAD_UNKNOWN`, or ``'n/a'``.
    verdict: str = field(init=False)

    def __post_init__(self) -> None:
        gc, base = list(self.gc_values.values()), list(self.base_values.values())
        self.gc, self.baseline = _mean(gc), _mean(base)
        self.gc_std, self.baseline_std = _std(gc), _std(base)
        self.seed_deltas = {
            seed: value - self.base_values[seed]
            for seed, value in self.gc_values.items()
            if seed in self.base_values
        }
        deltas = list(self.seed_deltas.values())
        self.delta = _mean(deltas)
        self.interval = paired_interval(deltas, self.confidence)
        self.verdict = _verdict(self.interval, len(deltas))


@dataclass
class Comparison:
    """Everything the reports show."""

    #: Per task present, one row per metric in :data:`METRICS` order.
    rows: list[ComparisonRow]
    #: The paired runs, by seed.
    pairs: list[RunPair]
    #: ``(side, run)`` of runs whose seed the other side lacks (left out).
    unpaired: list[tuple[str, RunResult]] = field(default_factory=list)
    #: ``(path, reason)`` of runs without metrics (left out).
    skipped: list[tuple[str, str]] = field(default_factory=list)
    #: The metafile entry the paper's deltas come from (None: not found).
    model: Optional[str] = None
    confidence: float = CONFIDENCE

    @property
    def seeds(self) -> list[Seed]:
        return [pair.seed for pair in self.pairs]

    def notes(self) -> list[str]:
        """Sentences about what was left out and why."""
        out = [
            f"left out: {side} run '{run.source}' (seed {_seed(run.seed)}): the "
            'other side has no run with that seed'
            for side, run in self.unpaired
        ]
        out += [f"left out: '{path}': {reason}" for path, reason in self.skipped]
        if len(self.pairs) == 1:
            out.append(
                'one run per side: the spread over seeds is unknown, so the delta '
                'may be noise; pass several runs per side (--gc RUN... --base RUN...).'
            )
        return out


def _seed(seed: Seed) -> str:
    return '?' if seed is None else str(seed)


def _by_seed(runs: Sequence[RunResult], side: str) -> dict[Seed, RunResult]:
    out: dict[Seed, RunResult] = {}
    for run in runs:
        if run.seed in out:
            raise ValueError(
                f"The {side} runs '{out[run.seed].source}' and '{run.source}' have the "
                f'same seed ({_seed(run.seed)}); give each seed once per side.'
            )
        out[run.seed] = run
    if None in out and len(runs) > 1:
        raise ValueError(
            f"The {side} run '{out[None].source}' has no known seed (its config sets "
            'none and none was recorded), so it cannot be paired among several runs.'
        )
    return out


def _pair(
    gc_runs: Sequence[RunResult], base_runs: Sequence[RunResult]
) -> tuple[list[RunPair], list[tuple[str, RunResult]]]:
    gc, base = _by_seed(gc_runs, 'GC'), _by_seed(base_runs, 'baseline')
    if len(gc_runs) == len(base_runs) == 1 and None in (gc_runs[0].seed, base_runs[0].seed):
        # one run per side, a seed unknown: pair them as they are
        return [RunPair(gc_runs[0].seed, gc_runs[0], base_runs[0])], []
    shared = [seed for seed in gc if seed in base]
    pairs = [RunPair(seed, gc[seed], base[seed]) for seed in sorted(shared)]
    unpaired = [('GC', run) for seed, run in gc.items() if seed not in base]
    unpaired += [('baseline', run) for seed, run in base.items() if seed not in gc]
    if not pairs:
        raise ValueError(
            'No seed is on both sides: GC runs have seeds '
            f'{sorted(_seed(s) for s in gc)}, baseline runs '
            f'{sorted(_seed(s) for s in base)}. Runs are paired by seed.'
        )
    return pairs, unpaired


def compare_runs(
    gc: Union[RunResult, Sequence[RunResult]],
    base: Union[RunResult, Sequence[RunResult]],
    *,
    metafile: Optional[str] = None,
    model: Optional[str] = None,
    ignore: Sequence[str] = (),
    skipped: Sequence[tuple[str, str]] = (),
    confidence: float = CONFIDENCE,
) -> Comparison:
    """Check the runs' configs, pair them by seed, and summarize their APs.

    Args:
        gc (RunResult | Sequence[RunResult]): The GC run(s).
        base (RunResult | Sequence[RunResult]): The baseline run(s).
        metafile (str, optional): ``configs/metafile.yml`` for the paper's
            deltas.
        model (str, optional): The metafile entry; it must exist. Defaults
            to the GC runs' config name, looked up quietly.
        ignore (Sequence[str]): Extra config keys allowed to differ.
        skipped (Sequence[tuple]): ``(path, reason)`` of runs left out
            before (see :func:`load_runs`), carried into the report.
        confidence (float): Level of the delta's interval. Defaults to 0.95.

    Returns:
        Comparison: The rows, the pairs and what was left out.

    Raises:
        ConfigMismatchError: If the configs differ in more than they may.
        ValueError: If a side is empty, a seed is given twice on a side, no
            seed is on both sides, ``model`` is not in the metafile, or no
            paired run has any COCO bbox or segm metric.
    """
    gc_runs = [gc] if isinstance(gc, RunResult) else list(gc)
    base_runs = [base] if isinstance(base, RunResult) else list(base)
    for runs, side in ((gc_runs, 'GC'), (base_runs, 'baseline')):
        if not runs:
            left = '; '.join(f"'{p}': {why}" for p, why in skipped)
            raise ValueError(
                f'No {side} run with metrics to compare' + (f' (left out: {left})' if left else '')
            )
    check_runs(gc_runs, base_runs, ignore)
    pairs, unpaired = _pair(gc_runs, base_runs)
    name = model or pairs[0].gc.config_name
    paper = paper_deltas(metafile, name, required=model is not None)
    rows = []
    for task in TASKS:
        if all(
            p.gc.ap(task, m) is None and p.base.ap(task, m) is None for p in pairs for m in METRICS
        ):
            continue
        for metric in METRICS:
            rows.append(
                ComparisonRow(
                    task,
                    metric,
                    _values(pairs, 'gc', task, metric),
                    _values(pairs, 'base', task, metric),
                    paper.get((task, metric)),
                    confidence,
                )
            )
    if not rows:
        raise ValueError('None of the paired runs holds COCO bbox or segm metrics.')
    return Comparison(rows, pairs, unpaired, list(skipped), name if paper else None, confidence)


def _values(pairs: Sequence[RunPair], side: str, task: str, metric: str) -> dict[Seed, float]:
    out = {}
    for pair in pairs:
        value = getattr(pair, side).ap(task, metric)
        if value is not None:
            out[pair.seed] = value
    return out


# ------------------------------------------------------------------ output


def _fmt(value: Optional[float], signed: bool = False, digits: int = 1) -> str:
    if value is None:
        return 'n/a'
    return f'{value:+.{digits}f}' if signed else f'{value:.{digits}f}'


def _side(mean: Optional[float], std: Optional[float]) -> str:
    if mean is None:
        return 'n/a'
    if std is None:
        return f'{mean:.1f}'
    return f'{mean:.2f} ± {std:.2f}'


def _interval(row: ComparisonRow) -> str:
    if row.interval is None:
        return 'n/a' if row.delta is None else 'unknown'
    low, high = row.interval
    return f'[{low:+.2f}, {high:+.2f}]'


def _per_seed(row: ComparisonRow) -> str:
    if not row.seed_deltas:
        return 'n/a'
    return ', '.join(f'{_seed(s)}: {d:+.1f}' for s, d in row.seed_deltas.items())


def _header(comparison: Comparison) -> tuple[str, ...]:
    level = f'{100 * comparison.confidence:g}%'
    return (
        'metric',
        'GC',
        'baseline',
        'delta',
        f'{level} interval',
        'per seed',
        'paper delta',
        'verdict',
    )


def _cells(comparison: Comparison, task: str) -> list[tuple[str, ...]]:
    return [
        (
            r.metric,
            _side(r.gc, r.gc_std),
            _side(r.baseline, r.baseline_std),
            _fmt(r.delta, signed=True, digits=2),
            _interval(r),
            _per_seed(r),
            _fmt(r.paper_delta, signed=True),
            r.verdict,
        )
        for r in comparison.rows
        if r.task == task
    ]


def _tasks(rows: Sequence[ComparisonRow]) -> list[str]:
    return [t for t in TASKS if any(r.task == t for r in rows)]


def _sides_line(comparison: Comparison) -> str:
    seeds = ', '.join(_seed(s) for s in comparison.seeds)
    n = len(comparison.pairs)
    return f'{n} pair{"s" if n != 1 else ""} of runs (seeds {seeds})'


def comparison_to_text(comparison: Comparison) -> str:
    """Plain-text tables, one per task, for the console."""
    header = _header(comparison)
    blocks = [_sides_line(comparison) + '; GC and baseline: mean ± standard deviation.']
    for task in _tasks(comparison.rows):
        cells = [header, *_cells(comparison, task)]
        widths = [max(len(c[i]) for c in cells) for i in range(len(header))]
        lines = [f'{task} (AP in %)']
        for i, cell in enumerate(cells):
            lines.append(
                '  '.join(
                    c.ljust(w) if j in (0, len(header) - 1) else c.rjust(w)
                    for j, (c, w) in enumerate(zip(cell, widths))
                ).rstrip()
            )
            if i == 0:
                lines.append('  '.join('-' * w for w in widths))
        blocks.append('\n'.join(lines))
    blocks += comparison.notes()
    return '\n\n'.join(blocks)


def comparison_to_markdown(comparison: Comparison, heading_level: int = 3) -> str:
    """Markdown: the runs, one table per task (``### bbox``, ...), notes."""
    level = f'{100 * comparison.confidence:g}%'
    lines = [
        f'{_sides_line(comparison)}, paired by seed:',
        '',
        '| seed | GC run | baseline run |',
        '|---|---|---|',
    ]
    for pair in comparison.pairs:
        lines.append(f'| {_seed(pair.seed)} | `{pair.gc.source}` | `{pair.base.source}` |')
    paper = comparison.model or 'no metafile entry for this config'
    lines += [
        '',
        'COCO AP in percent. GC and baseline: mean ± sample standard deviation '
        'over the runs; delta: the mean of the per-seed deltas (GC - baseline), '
        f"with its {level} interval (Student's t); verdict: 'GC higher' or "
        "'GC lower' when the interval excludes zero, else 'no clear difference'. "
        f"Paper delta: the paper's w/ GC - w/o GC ({paper}; n/a where the paper "
        'has no such number).',
        '',
    ]
    header = _header(comparison)
    for task in _tasks(comparison.rows):
        lines += [f'{"#" * heading_level} {task}', '']
        lines.append('| ' + ' | '.join(header) + ' |')
        lines.append('|---|' + '---:|' * 4 + '---|---:|---|')
        for cell in _cells(comparison, task):
            lines.append('| ' + ' | '.join(cell) + ' |')
        lines.append('')
    notes = comparison.notes()
    if notes:
        lines += [f'- {note}' for note in notes] + ['']
    return '\n'.join(lines)


def _num(value: Optional[float]) -> str:
    return '' if value is None else f'{value:.3f}'


_CSV_FIELDS = (
    'task',
    'metric',
    'gc',
    'baseline',
    'delta',
    'paper_delta',
    'gc_std',
    'baseline_std',
    'gc_runs',
    'baseline_runs',
    'pairs',
    'ci_low',
    'ci_high',
    'confidence',
    'verdict',
)
_SEED_FIELDS = ('task', 'metric', 'seed', 'gc', 'baseline', 'delta', 'gc_run', 'baseline_run')


def write_csv(comparison: Comparison, path: str, seeds_path: Optional[str] = None) -> str:
    """Write the summary table, and optionally one row per seed.

    ``path``: one row per task and metric with the columns of
    ``_CSV_FIELDS`` (``gc``/``baseline`` are means, ``delta`` the mean
    paired delta; empty = n/a). ``seeds_path``: ``task, metric, seed, gc,
    baseline, delta`` and the two runs' sources.

    Returns:
        str: ``path``.
    """
    with open(path, 'w', newline='', encoding='utf-8') as f:
        writer = csv.writer(f)
        writer.writerow(_CSV_FIELDS)
        for r in comparison.rows:
            low, high = r.interval or (None, None)
            writer.writerow(
                [
                    r.task,
                    r.metric,
                    *(_num(v) for v in (r.gc, r.baseline, r.delta, r.paper_delta)),
                    *(_num(v) for v in (r.gc_std, r.baseline_std)),
                    len(r.gc_values),
                    len(r.base_values),
                    len(r.seed_deltas),
                    _num(low),
                    _num(high),
                    f'{comparison.confidence:g}',
                    r.verdict,
                ]
            )
    if seeds_path is not None:
        with open(seeds_path, 'w', newline='', encoding='utf-8') as f:
            writer = csv.writer(f)
            writer.writerow(_SEED_FIELDS)
            for r in comparison.rows:
                for pair in comparison.pairs:
                    writer.writerow(
                        [
                            r.task,
                            r.metric,
                            '' if pair.seed is None else pair.seed,
                            _num(r.gc_values.get(pair.seed)),
                            _num(r.base_values.get(pair.seed)),
                            _num(r.seed_deltas.get(pair.seed)),
                            pair.gc.source,
                            pair.base.source,
                        ]
                    )
    return path


def delta_figure(comparison: Comparison, title: str = '') -> Any:
    """The AP deltas per metric: each seed, the mean with its interval, the paper's.

    Drawn on a bare ``matplotlib.figure.Figure`` (no pyplot backend is
    touched) with constrained layout; the legend sits below the axes, so it
    covers no point or label.

    Returns:
        matplotlib.figure.Figure: One panel per task.
    """
    from matplotlib.figure import Figure

    tasks = _tasks(comparison.rows)
    fig = Figure(figsize=(5.5 * len(tasks), 4.4), layout='constrained')
    axes = fig.subplots(1, len(tasks), squeeze=False)[0]
    level = f'{100 * comparison.confidence:g}%'
    handles = {}
    for ax, task in zip(axes, tasks):
        rows = [r for r in comparison.rows if r.task == task]
        for x, row in enumerate(rows):
            deltas = list(row.seed_deltas.values())
            if deltas:
                spread = 0.12 if len(deltas) > 1 else 0.0
                xs = [
                    x - 0.12 - spread / 2 + spread * i / max(1, len(deltas) - 1)
                    for i in range(len(deltas))
                ]
                handles['seed'] = ax.scatter(
                    xs, deltas, s=14, color='tab:gray', zorder=3, label='each seed'
                )
            if row.delta is not None:
                if row.interval is not None:
                    low, high = row.interval
                    err = [[row.delta - low], [high - row.delta]]
                else:
                    err = None
                handles['mean'] = ax.errorbar(
                    [x + 0.05],
                    [row.delta],
                    yerr=err,
                    fmt='o',
                    color='tab:red',
                    capsize=4,
                    zorder=4,
                    label=f'mean, {level} interval',
                )
            if row.paper_delta is not None:
                handles['paper'] = ax.scatter(
                    [x + 0.25],
                    [row.paper_delta],
                    marker='D',
                    s=28,
                    color='tab:blue',
                    zorder=4,
                    label="paper's delta",
                )
        ax.axhline(0.0, color='black', linewidth=0.8)
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels([r.metric for r in rows])
        ax.set_xlim(-0.6, len(rows) - 0.4)
        ax.set_ylabel('AP delta, GC - baseline (points)')
        ax.set_title(task)
        ax.grid(axis='y', alpha=0.3)
    if handles:
        fig.legend(
            list(handles.values()),
            [h.get_label() for h in handles.values()],
            loc='outside lower center',
            ncol=len(handles),
            fontsize=8,
        )
    seeds = ', '.join(_seed(s) for s in comparison.seeds)
    fig.suptitle(f'{title + ": " if title else ""}GC vs baseline, seeds {seeds}')
    return fig


#: File names :func:`write_report` writes into its folder.
REPORT_FILES = {
    'markdown': 'ap_comparison.md',
    'csv': 'ap_comparison.csv',
    'seeds_csv': 'ap_seeds.csv',
    'png': 'ap_deltas.png',
}


def write_report(
    comparison: Comparison, out_dir: str, title: Optional[str] = None
) -> dict[str, str]:
    """Write the Markdown, the two CSVs and the PNG into ``out_dir`` (created).

    Args:
        comparison (Comparison): From :func:`compare_runs`.
        out_dir (str): The folder.
        title (str, optional): The plot's title; defaults to the GC config's name.

    Returns:
        dict: Paths by kind, keys of :data:`REPORT_FILES`.
    """
    os.makedirs(out_dir, exist_ok=True)
    paths = {kind: osp.join(out_dir, name) for kind, name in REPORT_FILES.items()}
    with open(paths['markdown'], 'w', encoding='utf-8') as f:
        f.write(comparison_to_markdown(comparison))
    write_csv(comparison, paths['csv'], paths['seeds_csv'])
    if title is None:
        title = comparison.pairs[0].gc.config_name or ''
    delta_figure(comparison, title).savefig(paths['png'], dpi=100)
    return paths
