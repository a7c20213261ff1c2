"""The runs: loading them, checking their configs, pairing them by seed, and
the paper's deltas for their config (docs/tools.md, "Compare GC with its baseline").

A run is ``tools/test.py``'s ``test_metrics.json`` or a work dir holding it, else
a training work dir (both read by :mod:`mmgc.runtime.logs`); its config is the
*training* config the tested checkpoint recorded, not the test-time dump.
"""

from __future__ import annotations

import glob
import json
import math
import os.path as osp
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Optional

from mmengine.config import Config

from ..errors import ConfigError
from ..logs import METRICS_FILENAME, last_val_metrics, read_metrics
from ..metrics import TEST_CONFIG_SUFFIX

__all__ = [
    'METRICS',
    'TASK_METRICS',
    'TASK_TITLES',
    'MetricKey',
    'OPTIMIZER_KEYS',
    'RUN_LOCAL_KEYS',
    'SEED_KEY',
    'TASKS',
    'ConfigMismatchError',
    'MissingMetricsError',
    'RunPair',
    'RunResult',
    'check_configs',
    'config_differences',
    'load_run',
    'load_runs',
    'pair_runs',
    'paper_deltas',
]

#: COCO tasks: CocoMetric's prefix -> the metafile's AP prefix.
TASKS = {'bbox': 'box', 'segm': 'mask'}
#: Metric label -> CocoMetric's key suffix (``coco/<task>_<suffix>``).
METRICS = dict(AP='mAP', AP50='mAP_50', AP75='mAP_75', APs='mAP_s', APm='mAP_m', APl='mAP_l')


@dataclass(frozen=True)
class MetricKey:
    """Where a compared metric is in an evaluator's results: its ``key``, the
    factor to percent (``scale``: CocoMetric's fractions x 100; MMSegmentation's
    and MMPretrain's are percent already), and whether the report shows its
    complement ``100 - value`` (an error rate from an accuracy), where lower is better."""

    key: str
    scale: float = 1.0
    complement: bool = False

    @property
    def higher_is_better(self) -> bool:
        return not self.complement


#: Per task (a table of the report), the metrics compared, in order: COCO's box and
#: mask AP (MMDetection's CocoMetric), semantic segmentation's mIoU / mAcc / aAcc
#: (MMSegmentation's IoUMetric), classification's top-1 / top-5 accuracy and the
#: top-1 error (MMPretrain's Accuracy; the error is the paper's ImageNet number).
TASK_METRICS: dict[str, dict[str, MetricKey]] = {
    **{t: {m: MetricKey(f'coco/{t}_{k}', 100.0) for m, k in METRICS.items()} for t in TASKS},
    'sem_seg': {m: MetricKey(m) for m in ('mIoU', 'mAcc', 'aAcc')},
    'cls': {
        'top-1': MetricKey('accuracy/top1'),
        'top-5': MetricKey('accuracy/top5'),
        'top-1 err': MetricKey('accuracy/top1', complement=True),
    },
}
#: What each task's table compares, for the report's headings.
TASK_TITLES = dict(
    bbox='AP', segm='AP', sem_seg='mIoU, mAcc, aAcc', cls='top-1 and top-5 accuracy, top-1 error'
)
#: Metafile metric keys that are not ``'<box|mask> <metric>'`` -> (task, metric).
_PAPER_KEYS = {
    **{m: ('sem_seg', m) for m in TASK_METRICS['sem_seg']},
    'Top 1 Accuracy': ('cls', 'top-1'),
    'Top 5 Accuracy': ('cls', 'top-5'),
    'Top 1 Error': ('cls', 'top-1 err'),
}
#: Keys (or prefixes) in which a GC config may differ from its baseline: what the GC
#: configs change, and what ``enable_gc`` (``tools/train.py --gc``) changes.
OPTIMIZER_KEYS = (
    'custom_imports',
    'optim_wrapper.optimizer.type',
    'optim_wrapper.constructor',
    'optim_wrapper.gc',
    'optim_wrapper.paramwise_cfg.gc_layers',
)
#: Keys (or prefixes) that say where and how a run was launched or tested, not
#: what it computed (tools/train.py picks a CPU DDP wrapper without CUDA).
RUN_LOCAL_KEYS = (
    'work_dir',
    'launcher',
    'load_from',
    'resume',
    'env_cfg',
    'model_wrapper_cfg',
    'default_hooks.visualization',
)
#: The key that runs of one side may differ in, and that pairs runs.
SEED_KEY = 'randomness.seed'

Seed = Optional[int]


class ConfigMismatchError(ConfigError):
    """Runs' configs differ in more than they may (a user's error: the tools exit 2)."""


class MissingMetricsError(FileNotFoundError):
    """A run's folder exists but holds no COCO metrics (yet)."""


def _stem(path: Any) -> Optional[str]:
    return osp.splitext(osp.basename(path))[0] if isinstance(path, str) and path else None


def _seed(seed: Seed) -> str:
    return '?' if seed is None else str(seed)


@dataclass
class RunResult:
    """One run's metrics (CocoMetric's keys, fractions, read from ``source``), training
    config, its name (file stem, for the metafile) and seed (default: the config's)."""

    source: str
    metrics: dict[str, Any]
    config: Optional[Config] = None
    config_name: Optional[str] = None
    seed: Seed = None

    def __post_init__(self) -> None:
        if self.seed is None and self.config is not None:
            seed = (self.config.get('randomness') or {}).get('seed')
            self.seed = seed if isinstance(seed, int) else None

    def value(self, task: str, metric: str) -> Optional[float]:
        """``task``'s ``metric`` (:data:`TASK_METRICS`) in percent; None if absent or
        negative (COCO's -1: no data)."""
        spec = TASK_METRICS[task][metric]
        value = self.metrics.get(spec.key)
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
            return None
        return 100.0 - spec.scale * value if spec.complement else spec.scale * value

    def ap(self, task: str, metric: str) -> Optional[float]:
        """A COCO ``task``'s AP ``metric`` in percent (:meth:`value`)."""
        return self.value(task, metric)


class RunPair(NamedTuple):
    """A GC run and its baseline run: the same seed, or the only run of each
    side (``seed`` is None then if their seeds differ)."""

    seed: Seed
    gc: RunResult
    base: RunResult

    @property
    def label(self) -> str:
        """The seed, or both seeds when they differ (``'3 (GC) / 7 (baseline)'``)."""
        if self.gc.seed == self.base.seed:
            return _seed(self.gc.seed)
        return f'{_seed(self.gc.seed)} (GC) / {_seed(self.base.seed)} (baseline)'


def _read_config(path: str, text: Optional[str] = None) -> Config:
    """The config file ``path`` (or ``text``), without importing its ``custom_imports``."""
    if text is None:
        return Config.fromfile(path, import_custom_modules=False)
    with tempfile.TemporaryDirectory() as folder:
        with open(osp.join(folder, 'config.py'), 'w', encoding='utf-8') as f:
            f.write(text)
        return _read_config(osp.join(folder, 'config.py'))


def _run_from_work_dir(work_dir: str) -> RunResult:
    """The last validation of a training run (:func:`mmgc.runtime.logs.last_val_metrics`),
    with the config saved beside its scalars (else the one dumped in ``work_dir``)."""
    try:
        scalars, metrics = last_val_metrics(work_dir)
    except FileNotFoundError:
        raise MissingMetricsError(
            f"Work dir '{work_dir}' holds neither {METRICS_FILENAME} (run tools/test.py with "
            '--work-dir there) nor validation metrics in */vis_data/scalars.json.'
        ) from None
    dumped = glob.glob(osp.join(work_dir, '*.py'))
    dumped = [p for p in dumped if not p.endswith(TEST_CONFIG_SUFFIX)]  # not test.py's
    name = _stem(dumped[0]) if len(dumped) == 1 else None
    beside = scalars.with_name('config.py')  # LocalVisBackend's copy
    origin = str(beside) if beside.is_file() else name and osp.join(work_dir, f'{name}.py')
    source = osp.join(work_dir, *scalars.parts[-3:])  # <timestamp>/vis_data/scalars.json
    return RunResult(source, metrics, _read_config(origin) if origin else None, name)


def load_run(path: str, config: Optional[str] = None) -> RunResult:
    """Read a run's metrics and training config.

    Args:
        path (str): A metrics file written by ``tools/test.py``, or a work dir
            holding one (else the last validation of a training run).
        config (str, optional): A config file to use instead of the run's own.

    Raises:
        FileNotFoundError: If ``path`` or ``config`` does not exist.
        MissingMetricsError: If ``path`` holds none of :data:`TASK_METRICS`.
        ConfigError: If a metrics file is malformed.
    """
    file = osp.join(path, METRICS_FILENAME) if osp.isdir(path) else path
    if osp.isfile(file):
        try:
            record = read_metrics(file)
        except ValueError as err:  # a malformed file: the user's
            raise ConfigError(str(err)) from err
        seed = record.get('seed') if isinstance(record.get('seed'), int) else None
        run = RunResult(file, record['metrics'], None, _stem(record.get('config')), seed)
        texts = [record.get(k) for k in ('train_config_text', 'config_text')]  # test-time: /1
        texts = [t for t in texts if isinstance(t, str) and t.strip()]
        run.config = _read_config('', texts[0]) if texts else None
    elif osp.isdir(path):
        run = _run_from_work_dir(path)
    else:
        raise FileNotFoundError(f"'{path}' is neither a work dir nor a metrics file.")
    if all(run.value(t, m) is None for t, metrics in TASK_METRICS.items() for m in metrics):
        raise MissingMetricsError(
            f"'{run.source}' holds no COCO bbox or segm metrics (keys 'coco/bbox_mAP', ...), "
            "nor MMSegmentation's ('mIoU', ...) or MMPretrain's ('accuracy/top1', ...)."
        )
    if config is not None:
        if not osp.isfile(config):
            raise FileNotFoundError(f"Config file '{config}' does not exist.")
        run.config, run.config_name = _read_config(config), _stem(config)
    run.__post_init__()  # the config's seed, if none was recorded
    return run


def load_runs(
    paths: Sequence[str], config: Optional[str] = None
) -> tuple[list[RunResult], list[tuple[str, str]]]:
    """The runs read by :func:`load_run`, and ``(path, reason)`` of each run without metrics."""
    runs, skipped = [], []
    for path in paths:
        try:
            runs.append(load_run(path, config))
        except MissingMetricsError as err:
            skipped.append((path, str(err)))
    return runs, skipped


def _flatten(tree: Any, prefix: str = '') -> dict[str, Any]:
    """Dotted key -> value; lists are leaves (a pipeline is compared whole)."""
    if not isinstance(tree, dict) or not tree:
        return {prefix[:-1]: tree}
    return {k: v for key, sub in tree.items() for k, v in _flatten(sub, f'{prefix}{key}.').items()}


def config_differences(
    first: Mapping,
    second: Mapping,
    ignore: Sequence[str] = (),
    allowed: Sequence[str] = (*OPTIMIZER_KEYS, *RUN_LOCAL_KEYS),
) -> list[str]:
    """The sorted dotted keys in which two configs differ, beyond ``allowed``
    and ``ignore`` (keys or key prefixes); empty when comparable."""
    # a JSON round trip makes tuples lists and config dicts dicts
    a, b = (
        _flatten(json.loads(json.dumps(c.to_dict() if isinstance(c, Config) else c, default=str)))
        for c in (first, second)
    )
    skip = (*allowed, *ignore)
    return sorted(
        key
        for key in a.keys() | b.keys()
        if (key in a, a.get(key)) != (key in b, b.get(key))
        and not any(key == p or key.startswith(p + '.') for p in skip)
    )


def check_configs(
    gc_runs: Sequence[RunResult], base_runs: Sequence[RunResult], ignore: Sequence[str] = ()
) -> None:
    """Within a side, runs may differ only in the seed and :data:`RUN_LOCAL_KEYS`;
    across the sides also in :data:`OPTIMIZER_KEYS` (and ``ignore``, everywhere).

    Raises:
        ConfigMismatchError: Naming the runs and (up to 20) keys, or a run without config.
    """

    def refuse(head: str, first: RunResult, second: RunResult, allowed: tuple) -> None:
        diff = config_differences(first.config, second.config, ignore, allowed)
        if diff:
            more = f' (+{len(diff) - 20} more)' if len(diff) > 20 else ''
            raise ConfigMismatchError(
                f'{head}, in: {", ".join(diff[:20])}{more}. Re-run them with equal settings, '
                'or pass --ignore-keys for keys you know do not matter.'
            )

    within = (*RUN_LOCAL_KEYS, SEED_KEY)
    for runs, side, flag in ((gc_runs, 'GC', 'gc'), (base_runs, 'baseline', 'base')):
        for run in runs:
            if run.config is None:
                raise ConfigMismatchError(
                    f"No config found for '{run.source}', so it cannot be checked that the runs "
                    f'differ only in the optimizer and the seed; pass --{flag}-config.'
                )
            head = f"Refusing to compare: the {side} runs '{runs[0].source}' and '{run.source}'"
            refuse(f'{head} differ in more than the seed', runs[0], run, within)
    gc, base = gc_runs[0], base_runs[0]
    head = f"Refusing to compare '{gc.source}' with '{base.source}': their configs differ"
    refuse(f'{head} in more than the optimizer', gc, base, (*OPTIMIZER_KEYS, *within))


def _by_seed(runs: Sequence[RunResult], side: str) -> dict[Seed, RunResult]:
    out: dict[Seed, RunResult] = {}
    for run in runs:
        if run.seed in out:
            raise ConfigError(
                f"The {side} runs '{out[run.seed].source}' and '{run.source}' have the same seed "
                f'({_seed(run.seed)}); give each seed once per side.'
            )
        out[run.seed] = run
    if None in out and len(runs) > 1:
        raise ConfigError(
            f"The {side} run '{out[None].source}' has no known seed (its config sets none and "
            'none was recorded), so it cannot be paired among several runs.'
        )
    return out


def pair_runs(
    gc_runs: Sequence[RunResult], base_runs: Sequence[RunResult]
) -> tuple[list[RunPair], list[tuple[str, RunResult]]]:
    """The pairs, and ``(side, run)`` of each run left out. One run per side:
    the two are paired whatever their seeds. Several: runs sharing a seed.

    Raises:
        ConfigError: With several runs on a side, if a seed is twice on a side,
            a run's seed is unknown, or no seed is on both sides.
    """
    if len(gc_runs) == len(base_runs) == 1:
        gc, base = gc_runs[0], base_runs[0]
        return [RunPair(gc.seed if gc.seed == base.seed else None, gc, base)], []
    by_gc, by_base = _by_seed(gc_runs, 'GC'), _by_seed(base_runs, 'baseline')
    pairs = [RunPair(s, by_gc[s], by_base[s]) for s in sorted(by_gc.keys() & by_base.keys())]
    if not pairs:
        raise ConfigError(
            f'No seed is on both sides: GC runs have seeds {sorted(map(_seed, by_gc))}, baseline '
            f'runs {sorted(map(_seed, by_base))}. Several runs per side are paired by seed: '
            'train both sides with the same seeds (--cfg-options randomness.seed=S), or compare '
            'one run per side.'
        )
    unpaired = [('GC', r) for s, r in by_gc.items() if s not in by_base]
    unpaired += [('baseline', r) for s, r in by_base.items() if s not in by_gc]
    return pairs, unpaired


def paper_deltas(
    metafile: Optional[str], name: Optional[str], *, required: bool = False
) -> dict[tuple[str, str], float]:
    """The paper's gains ``{(task, metric): Metrics - Paper Baseline}`` for
    model ``name`` (a ``Name``, or its config's name or path) in ``metafile``
    (MMDetection's model-index form, as ``configs/metafile.yml``); ``{}`` if
    ``metafile`` is None or ``name`` is not in it.

    Raises:
        ConfigError: If ``required`` and ``name`` is not found, listing the valid names.
    """
    import yaml

    models = []
    if metafile is not None:
        with open(metafile, encoding='utf-8') as f:
            models = yaml.safe_load(f)['Models']
    stem = _stem(name)
    model = next((m for m in models if stem in (m['Name'], _stem(m['Config']))), None)
    if model is None or not stem:
        if required:
            valid = ', '.join(sorted(m['Name'] for m in models)) or 'none'
            raise ConfigError(f'--model {name!r} is not in {metafile}; valid names: {valid}.')
        return {}
    return {  # a null value: no paper number (the segmentation rows)
        _paper_key(key): round(value - r['Paper Baseline'][key], 6)
        for r in model['Results']
        for key, value in r['Metrics'].items()
        if _paper_key(key) is not None and None not in (value, r['Paper Baseline'][key])
    }


def _paper_key(key: str) -> Optional[tuple[str, str]]:
    """``(task, metric)`` of a metafile metric key (``'box AP50'``, ``'mIoU'``,
    ``'Top 1 Accuracy'``); None for one the comparison does not show."""
    if key in _PAPER_KEYS:
        return _PAPER_KEYS[key]
    prefix, _, metric = key.partition(' ')
    tasks = {prefix: task for task, prefix in TASKS.items()}
    return (tasks[prefix], metric) if prefix in tasks and metric in METRICS else None
