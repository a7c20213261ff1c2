"""Did GC help? Compare GC runs with their baseline twins over seeds.

A run is ``tools/test.py``'s ``test_metrics.json`` (:mod:`mmgc.runtime.metrics`)
or a work dir holding it, else a training work dir (its last validation in
``*/vis_data/scalars.json``, with the config saved beside it). Its config is
the *training* config the tested checkpoint recorded, not the test-time dump.

The configs are checked first: within a side runs may differ only in
:data:`SEED_KEY` and :data:`RUN_LOCAL_KEYS`, across the sides also in
:data:`OPTIMIZER_KEYS`; anything else raises :class:`ConfigMismatchError`
naming the keys. With one run per side the two are paired whatever their
seeds (MMEngine draws a random seed for a config without one), and the report
names both seeds; with several, runs that share a seed are paired and a seed
on one side only is named and left out. Per task and metric: each side's
mean and sample standard deviation, each seed's delta (GC - baseline), their
mean with a Student's t interval (:func:`paired_interval`), a verdict read from it
(:data:`VERDICTS`; :data:`SPREAD_UNKNOWN` with one pair) and the paper's delta
from ``configs/metafile.yml``. APs are in percent (CocoMetric's x 100).
"""

from __future__ import annotations

import csv
import glob
import json
import math
import os
import os.path as osp
import statistics
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Optional, Union

from mmengine.config import Config

from mmgc.runtime.errors import ConfigError
from mmgc.runtime.metrics import METRICS_FILENAME, TEST_CONFIG_SUFFIX, read_metrics_file

#: COCO tasks: CocoMetric's prefix -> the metafile's AP prefix.
TASKS = {'bbox': 'box', 'segm': 'mask'}
#: Metric label -> CocoMetric's key suffix (``coco/<task>_<suffix>``).
METRICS = {'AP': 'mAP', 'AP50': 'mAP_50', 'AP75': 'mAP_75', 'APs': 'mAP_s', 'APm': 'mAP_m',
           'APl': 'mAP_l'}  # fmt: skip
#: Keys (or prefixes) in which a GC config may differ from its baseline: what the GC
#: configs change, and what ``enable_gc`` (``tools/train.py --gc``) changes.
OPTIMIZER_KEYS = ('custom_imports', 'optim_wrapper.optimizer.type', 'optim_wrapper.constructor',
                  'optim_wrapper.gc', 'optim_wrapper.paramwise_cfg.gc_layers')  # fmt: skip
#: Keys (or prefixes) that say where and how a run was launched or tested, not
#: what it computed (tools/train.py picks a CPU DDP wrapper without CUDA).
RUN_LOCAL_KEYS = ('work_dir', 'launcher', 'load_from', 'resume', 'env_cfg', 'model_wrapper_cfg',
                  'default_hooks.visualization')  # fmt: skip
#: The key that runs of one side may differ in, and that pairs runs.
SEED_KEY = 'randomness.seed'
#: The verdicts, read from the interval: above zero, containing zero, below.
VERDICTS = ('GC higher', 'no clear difference', 'GC lower')
#: The verdict with a single pair: no spread to judge by.
SPREAD_UNKNOWN = 'spread unknown (1 seed)'
#: File names :func:`write_report` writes into its folder.
REPORT_FILES = {'markdown': 'ap_comparison.md', 'csv': 'ap_comparison.csv',
                'seeds_csv': 'ap_seeds.csv', 'png': 'ap_deltas.png'}  # fmt: skip

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

    def ap(self, task: str, metric: str) -> Optional[float]:
        """``task``'s ``metric`` in percent; None if absent or negative (COCO's -1: no data)."""
        value = self.metrics.get(f'coco/{task}_{METRICS[metric]}')
        ok = isinstance(value, (int, float)) and math.isfinite(value) and value >= 0
        return 100.0 * value if ok else None


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
    """The last validation of a training run, with its config."""
    for scalars in sorted(glob.glob(osp.join(work_dir, '*', 'vis_data', 'scalars.json')))[::-1]:
        last = None
        with open(scalars, encoding='utf-8') as f:
            for line in f:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:  # a line being written
                    continue
                last = record if any(str(k).startswith('coco/') for k in record) else last
        if last is not None:
            dumped = glob.glob(osp.join(work_dir, '*.py'))
            dumped = [p for p in dumped if not p.endswith(TEST_CONFIG_SUFFIX)]  # not test.py's
            name = _stem(dumped[0]) if len(dumped) == 1 else None
            beside = osp.join(osp.dirname(scalars), 'config.py')  # LocalVisBackend's copy
            origin = beside if osp.isfile(beside) else name and osp.join(work_dir, f'{name}.py')
            metrics = {k: v for k, v in last.items() if k.startswith('coco/')}
            config = _read_config(origin) if origin else None
            return RunResult(scalars, metrics, config, name)
    raise MissingMetricsError(
        f"Work dir '{work_dir}' holds neither {METRICS_FILENAME} (run tools/test.py with "
        '--work-dir there) nor validation metrics in */vis_data/scalars.json.'
    )


def load_run(path: str, config: Optional[str] = None) -> RunResult:
    """Read a run's metrics and training config.

    Args:
        path (str): A metrics file written by ``tools/test.py``, or a work dir
            holding one (else the last validation of a training run).
        config (str, optional): A config file to use instead of the run's own.

    Raises:
        FileNotFoundError: If ``path`` or ``config`` does not exist.
        MissingMetricsError: If ``path`` holds no COCO bbox or segm AP.
        ConfigError: If a metrics file is malformed.
    """
    file = osp.join(path, METRICS_FILENAME) if osp.isdir(path) else path
    if osp.isfile(file):
        try:
            record = read_metrics_file(file)
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
    if all(run.ap(t, m) is None for t in TASKS for m in METRICS):
        raise MissingMetricsError(
            f"'{run.source}' holds no COCO bbox or segm metrics (keys 'coco/bbox_mAP', ...)."
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
    first: Mapping, second: Mapping, ignore: Sequence[str] = (),
    allowed: Sequence[str] = (*OPTIMIZER_KEYS, *RUN_LOCAL_KEYS),
) -> list[str]:  # fmt: skip
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


def _check_configs(gc_runs: list, base_runs: list, ignore: Sequence[str]) -> None:
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


def paper_deltas(
    metafile: Optional[str], name: Optional[str], *, required: bool = False
) -> dict[tuple[str, str], float]:
    """The paper's AP gains ``{(task, metric): Metrics - Paper Baseline}`` for
    model ``name`` (a ``Name``, or its config's name or path) in ``metafile``
    (MMDetection's model-index form); ``{}`` if either is missing or malformed.

    Raises:
        ValueError: If ``required`` and ``name`` is not found, listing the valid names.
    """
    import yaml

    try:
        with open(metafile or '', encoding='utf-8') as f:
            models = yaml.safe_load(f).get('Models')
    except (OSError, yaml.YAMLError, AttributeError):  # no file, not a mapping
        models = None
    models = [m for m in models if isinstance(m, dict)] if isinstance(models, list) else []
    stem = _stem(name)
    model = next((m for m in models if stem in (m.get('Name'), _stem(m.get('Config')))), None)
    if model is None or not stem:
        if required:
            valid = [m['Name'] for m in models if isinstance(m.get('Name'), str)]
            valid = ', '.join(sorted(valid)) or 'none'
            raise ConfigError(f'--model {name!r} is not in {metafile}; valid names: {valid}.')
        return {}
    tasks, deltas = {prefix: task for task, prefix in TASKS.items()}, {}
    results = model.get('Results')
    for result in [r for r in results if isinstance(r, dict)] if isinstance(results, list) else []:
        with_gc, base = result.get('Metrics'), result.get('Paper Baseline')
        if not (isinstance(with_gc, dict) and isinstance(base, dict)):
            continue
        for key, value in with_gc.items():
            prefix, _, metric = str(key).partition(' ')
            numbers = all(isinstance(v, (int, float)) for v in (value, base.get(key)))
            if prefix in tasks and metric in METRICS and numbers:
                deltas[tasks[prefix], metric] = round(value - base[key], 6)
    return deltas


def paired_interval(
    deltas: Sequence[float], confidence: float = 0.95
) -> Optional[tuple[float, float]]:
    """The ``confidence`` interval ``(low, high)`` of the mean of paired deltas
    (``scipy.stats.t``); None below two deltas, zero width for equal ones.

    Raises:
        ValueError: If ``confidence`` is not in (0, 1).
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f'confidence must be in (0, 1); got {confidence!r}')
    if len(deltas) < 2:
        return None
    mean, sem = statistics.mean(deltas), statistics.stdev(deltas) / math.sqrt(len(deltas))
    if sem == 0.0:
        return (mean, mean)
    from scipy import stats

    low, high = stats.t.interval(confidence, len(deltas) - 1, loc=mean, scale=sem)
    return (float(low), float(high))


@dataclass
class ComparisonRow:
    """One metric of one task over the pairs: APs in percent, by seed.

    ``gc``/``baseline``: the sides' means; ``*_std``: their sample standard
    deviations (None below two runs); ``seed_deltas``: GC - baseline where
    both have a value; ``delta``: their mean; ``interval``: its interval
    (None below two pairs); ``verdict``: one of :data:`VERDICTS`,
    :data:`SPREAD_UNKNOWN` or ``'n/a'`` (no pair with both values).
    """

    task: str
    metric: str
    gc_values: dict[Seed, float]
    base_values: dict[Seed, float]
    paper_delta: Optional[float] = None
    confidence: float = 0.95
    gc: Optional[float] = field(init=False)
    baseline: Optional[float] = field(init=False)
    gc_std: Optional[float] = field(init=False)
    baseline_std: Optional[float] = field(init=False)
    seed_deltas: dict[Seed, float] = field(init=False)
    delta: Optional[float] = field(init=False)
    interval: Optional[tuple[float, float]] = field(init=False)
    verdict: str = field(init=False)

    def __post_init__(self) -> None:
        gc, base = list(self.gc_values.values()), list(self.base_values.values())
        self.gc, self.baseline = (statistics.mean(v) if v else None for v in (gc, base))
        self.gc_std, self.baseline_std = (
            statistics.stdev(v) if len(v) > 1 else None for v in (gc, base)
        )
        self.seed_deltas = {
            s: v - self.base_values[s] for s, v in self.gc_values.items() if s in self.base_values
        }
        deltas = list(self.seed_deltas.values())
        self.delta = statistics.mean(deltas) if deltas else None
        self.interval = paired_interval(deltas, self.confidence)
        if self.interval is None:
            self.verdict = SPREAD_UNKNOWN if deltas else 'n/a'
        else:
            low, high = self.interval
            self.verdict = VERDICTS[0] if low > 0 else VERDICTS[2] if high < 0 else VERDICTS[1]


@dataclass
class Comparison:
    """What the reports show: ``rows`` (per task present, one per metric),
    the ``pairs`` by seed, the runs left out (``unpaired``: ``(side, run)``;
    ``skipped``: ``(path, reason)``), and the metafile entry ``model`` of the
    paper's deltas (None: not found)."""

    rows: list[ComparisonRow]
    pairs: list[RunPair]
    unpaired: list[tuple[str, RunResult]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    model: Optional[str] = None
    confidence: float = 0.95

    @property
    def seeds(self) -> list[Seed]:
        return [pair.seed for pair in self.pairs]

    def notes(self) -> list[str]:
        """Sentences about what was left out and why."""
        out = [
            f"left out: {side} run '{run.source}' (seed {_seed(run.seed)}): the other side has "
            'no run with that seed'
            for side, run in self.unpaired
        ]
        out += [f"left out: '{path}': {reason}" for path, reason in self.skipped]
        if len(self.pairs) == 1:
            pair = self.pairs[0]
            if pair.gc.seed != pair.base.seed:
                out.append(
                    f'one run per side, paired although their seeds differ (GC seed '
                    f'{_seed(pair.gc.seed)}, baseline seed {_seed(pair.base.seed)}): the delta '
                    "holds the seed's effect too; train both with the same seed "
                    '(--cfg-options randomness.seed=S) to pair them by seed.'
                )
            out.append(
                'one run per side: the spread over seeds is unknown, so the delta may be noise; '
                'pass several runs per side (--gc RUN... --base RUN...).'
            )
        return out


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


def _pair_by_seed(
    gc_runs: Sequence[RunResult], base_runs: Sequence[RunResult]
) -> tuple[list[RunPair], list[tuple[str, RunResult]]]:
    """Runs of several per side, paired by seed; and ``(side, run)`` of each left out.

    Raises:
        ConfigError: If a seed is twice on a side, a run's seed is unknown, or
            no seed is on both sides.
    """
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


def compare_runs(
    gc: Union[RunResult, Sequence[RunResult]],
    base: Union[RunResult, Sequence[RunResult]],
    *,
    metafile: Optional[str] = None,
    model: Optional[str] = None,
    ignore: Sequence[str] = (),
    skipped: Sequence[tuple[str, str]] = (),
    confidence: float = 0.95,
) -> Comparison:
    """Check the runs' configs, pair them, and summarize their APs.

    One run per side: the two are paired whatever their seeds (the notes name
    both when they differ), and the spread over seeds is unknown. Several runs
    on a side: runs are paired by seed, and a seed on one side only is left out.

    Args:
        gc (RunResult | Sequence[RunResult]): The GC run(s).
        base (RunResult | Sequence[RunResult]): The baseline run(s).
        metafile (str, optional): ``configs/metafile.yml``, for the paper's deltas.
        model (str, optional): The metafile entry; it must exist. Defaults to
            the GC runs' config name, looked up quietly.
        ignore (Sequence[str]): More config keys allowed to differ.
        skipped (Sequence[tuple]): ``(path, reason)`` of runs left out before
            (:func:`load_runs`), named in the report.
        confidence (float): Level of the delta's interval. Defaults to 0.95.

    Raises:
        ConfigMismatchError: If the configs differ in more than they may.
        ConfigError: If a side is empty, or (several runs on a side) a seed
            is given twice on a side, a run's seed is unknown or no seed is
            on both sides, or ``model`` is not in the metafile.
    """
    gc_runs = [gc] if isinstance(gc, RunResult) else list(gc)
    base_runs = [base] if isinstance(base, RunResult) else list(base)
    for runs, side in ((gc_runs, 'GC'), (base_runs, 'baseline')):
        if not runs:
            left = '; '.join(f"'{p}': {why}" for p, why in skipped)
            left = left and f' (left out: {left})'
            raise ConfigError(f'No {side} run with metrics to compare{left}')
    _check_configs(gc_runs, base_runs, ignore)
    if len(gc_runs) == len(base_runs) == 1:  # one run per side: paired, whatever their seeds
        gc_run, base_run = gc_runs[0], base_runs[0]
        same = gc_run.seed == base_run.seed
        pairs, unpaired = [RunPair(gc_run.seed if same else None, gc_run, base_run)], []
    else:
        pairs, unpaired = _pair_by_seed(gc_runs, base_runs)
    name = model or pairs[0].gc.config_name
    paper = paper_deltas(metafile, name, required=model is not None)
    rows = []
    for task in TASKS:
        values = {m: [_values(pairs, side, task, m) for side in ('gc', 'base')] for m in METRICS}
        if any(gc or base for gc, base in values.values()):  # the runs have this task
            rows += [ComparisonRow(task, m, *values[m], paper.get((task, m)), confidence)
                     for m in METRICS]  # fmt: skip
    if not rows:
        raise ConfigError('None of the paired runs holds COCO bbox or segm metrics.')
    return Comparison(rows, pairs, unpaired, list(skipped), name if paper else None, confidence)


def _values(pairs: list[RunPair], side: str, task: str, metric: str) -> dict[Seed, float]:
    values = {pair.seed: getattr(pair, side).ap(task, metric) for pair in pairs}
    return {seed: value for seed, value in values.items() if value is not None}


def _fmt(value: Optional[float], spec: str = '+.1f') -> str:
    return 'n/a' if value is None else format(value, spec)


def _cells(row: ComparisonRow, labels: Mapping[Seed, str]) -> tuple[str, ...]:
    def side(mean: Optional[float], std: Optional[float]) -> str:
        return _fmt(mean, '.1f') if std is None else f'{mean:.2f} ± {std:.2f}'

    interval = row.interval and '[{:+.2f}, {:+.2f}]'.format(*row.interval)
    seeds = ', '.join(f'{labels.get(s, _seed(s))}: {d:+.1f}' for s, d in row.seed_deltas.items())
    return (row.metric, side(row.gc, row.gc_std), side(row.baseline, row.baseline_std),
            _fmt(row.delta, '+.2f'), interval or ('n/a' if row.delta is None else 'unknown'),
            seeds or 'n/a', _fmt(row.paper_delta), row.verdict)  # fmt: skip


def markdown_table(header: Sequence[str], rows: Sequence[Sequence], align: str = '') -> list[str]:
    """The lines of a Markdown table; ``align[i] == 'r'`` right-aligns column ``i``."""
    rule = '|'.join('---:' if a == 'r' else '---' for a in align.ljust(len(header)))
    lines = [f'| {" | ".join(map(str, row))} |' for row in (header, *rows)]
    return [lines[0], f'|{rule}|', *lines[1:]]


def comparison_to_markdown(comparison: Comparison) -> str:
    """The runs, one table per task (``### bbox (AP in %)``, ...) and the notes, in Markdown."""
    c, level, n = comparison, f'{100 * comparison.confidence:g}%', len(comparison.pairs)
    runs = [(p.label, f'`{p.gc.source}`', f'`{p.base.source}`') for p in c.pairs]
    one = n == 1 and c.pairs[0].gc.seed != c.pairs[0].base.seed
    lines = [
        f'{n} pair{"s" * (n != 1)} of runs (seeds {", ".join(p.label for p in c.pairs)}), '
        f'{"the only run of each side" if one else "paired by seed"}:',
        '',
        *markdown_table(('seed', 'GC run', 'baseline run'), runs),
        '',
        'COCO AP in percent. GC and baseline: mean ± sample standard deviation over the runs; '
        f'delta: the mean of the per-seed deltas (GC - baseline), with its {level} interval '
        "(Student's t); verdict: 'GC higher' or 'GC lower' when the interval excludes zero, "
        "else 'no clear difference'. Paper delta: the paper's w/ GC - w/o GC "
        f'({c.model or "no metafile entry for this config"}; n/a where the paper has no such '
        'number).',
        '',
    ]
    header = ('metric', 'GC', 'baseline', 'delta', f'{level} interval', 'per seed', 'paper delta',
              'verdict')  # fmt: skip
    for task in dict.fromkeys(r.task for r in c.rows):
        rows = [_cells(r, {p.seed: p.label for p in c.pairs}) for r in c.rows if r.task == task]
        lines += [f'### {task} (AP in %)', '', *markdown_table(header, rows, 'lrrrrlrl'), '']
    return '\n'.join(lines + [f'- {note}' for note in c.notes()]) + '\n'


def delta_figure(comparison: Comparison, title: str = '') -> Any:
    """Per task and metric: each seed's delta, the mean with its interval, the paper's delta.

    Returns:
        matplotlib.figure.Figure: On a bare figure (no pyplot), the legend below the axes.
    """
    from matplotlib.figure import Figure

    tasks = list(dict.fromkeys(r.task for r in comparison.rows))
    fig = Figure(figsize=(5.5 * len(tasks), 4.4), layout='constrained')
    level, handles = f'{100 * comparison.confidence:g}%', {}
    for ax, task in zip(fig.subplots(1, len(tasks), squeeze=False)[0], tasks):
        rows = [r for r in comparison.rows if r.task == task]
        for x, row in enumerate(rows):
            deltas, n = list(row.seed_deltas.values()), len(row.seed_deltas)
            if deltas:  # the seeds side by side, left of the mean
                xs = [x - 0.12 + (0.12 * i / (n - 1) - 0.06 if n > 1 else 0.0) for i in range(n)]
                handles['seed'] = ax.scatter(xs, deltas, s=14, c='tab:gray', zorder=3,
                                             label='each seed')  # fmt: skip
            if row.delta is not None:
                low, high = row.interval or (None, None)
                err = row.interval and [[row.delta - low], [high - row.delta]]
                handles['mean'] = ax.errorbar(
                    [x + 0.05], [row.delta], err,
                    fmt='o', color='tab:red', capsize=4, zorder=4, label=f'mean, {level} interval',
                )  # fmt: skip
            if row.paper_delta is not None:
                handles['paper'] = ax.scatter(
                    [x + 0.25], [row.paper_delta], marker='D', s=28, c='tab:blue', zorder=4,
                    label="paper's delta",
                )  # fmt: skip
        ax.axhline(0.0, color='black', linewidth=0.8)
        ax.set_xticks(range(len(rows)), [r.metric for r in rows])
        ax.set(xlim=(-0.6, len(rows) - 0.4), ylabel='AP delta, GC - baseline (points)', title=task)
        ax.grid(axis='y', alpha=0.3)
    fig.legend(list(handles.values()), [h.get_label() for h in handles.values()],
               loc='outside lower center', ncol=max(1, len(handles)), fontsize=8)  # fmt: skip
    seeds = ', '.join(pair.label for pair in comparison.pairs)
    fig.suptitle(f'{title + ": " if title else ""}GC vs baseline, seeds {seeds}')
    return fig


def _num(value: Optional[float]) -> str:
    return '' if value is None else f'{value:.3f}'


def write_report(comparison: Comparison, out_dir: str, title: Optional[str] = None) -> dict:
    """Write :data:`REPORT_FILES` into ``out_dir`` (created): the Markdown; a
    CSV with one row per task and metric (means, delta, paper delta, stds,
    counts, interval, verdict; empty = n/a); a CSV per task, metric and seed;
    the PNG of :func:`delta_figure` titled ``title`` (default: the GC config's name).

    Returns:
        dict: Paths by kind, the keys of :data:`REPORT_FILES`.
    """
    c = comparison
    tables = {
        'csv': [('task', 'metric', 'gc', 'baseline', 'delta', 'paper_delta', 'gc_std',
                 'baseline_std', 'gc_runs', 'baseline_runs', 'pairs', 'ci_low', 'ci_high',
                 'confidence', 'verdict')] + [
            (r.task, r.metric, *map(_num, (r.gc, r.baseline, r.delta, r.paper_delta, r.gc_std,
             r.baseline_std)), len(r.gc_values), len(r.base_values), len(r.seed_deltas),
             *map(_num, r.interval or (None, None)), f'{c.confidence:g}', r.verdict)
            for r in c.rows],
        'seeds_csv': [('task', 'metric', 'seed', 'gc', 'baseline', 'delta', 'gc_run',
                       'baseline_run')] + [
            (r.task, r.metric, '' if p.seed is None else p.seed, _num(r.gc_values.get(p.seed)),
             _num(r.base_values.get(p.seed)), _num(r.seed_deltas.get(p.seed)), p.gc.source,
             p.base.source) for r in c.rows for p in c.pairs],
    }  # fmt: skip
    os.makedirs(out_dir, exist_ok=True)
    paths = {kind: osp.join(out_dir, name) for kind, name in REPORT_FILES.items()}
    with open(paths['markdown'], 'w', encoding='utf-8') as f:
        f.write(comparison_to_markdown(c))
    for kind, rows in tables.items():
        with open(paths[kind], 'w', newline='', encoding='utf-8') as f:
            csv.writer(f).writerows(rows)
    title = (c.pairs[0].gc.config_name or '') if title is None else title
    delta_figure(c, title).savefig(paths['png'], dpi=100)
    return paths
