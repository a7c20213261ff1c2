"""The statistics: per task and metric, each side's mean and spread, the
per-seed deltas, their mean with a Student's t interval, and a verdict."""

from __future__ import annotations

import statistics
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Optional, Union

from ..errors import ConfigError
from .runs import (
    TASK_METRICS,
    RunPair,
    RunResult,
    Seed,
    _seed,
    check_configs,
    pair_runs,
    paper_deltas,
)

__all__ = [
    'SPREAD_UNKNOWN',
    'VERDICTS',
    'VERDICTS_LOWER_IS_BETTER',
    'Comparison',
    'ComparisonRow',
    'compare_runs',
    'paired_interval',
]

#: The verdicts, read from the interval: above zero, containing zero, below.
VERDICTS = ('GC higher', 'no clear difference', 'GC lower')
#: The verdicts for a metric where lower is better (an error rate), in the same order.
VERDICTS_LOWER_IS_BETTER = ('GC higher (worse)', 'no clear difference', 'GC lower (better)')
#: The verdict with a single pair: no spread to judge by.
SPREAD_UNKNOWN = 'spread unknown (1 seed)'


def paired_interval(
    deltas: Sequence[float], confidence: float = 0.95
) -> Optional[tuple[float, float]]:
    r"""The ``confidence`` interval ``(low, high)`` of the mean of paired deltas
    :math:`d_1..d_n`: :math:`\bar d \pm t_{(1+c)/2,\,n-1}\, s_d/\sqrt n`
    (``scipy.stats.ttest_1samp(d).confidence_interval(c)``); None below two
    deltas, zero width for equal ones.

    Raises:
        ValueError: If ``confidence`` is not in (0, 1).
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f'confidence must be in (0, 1); got {confidence!r}')
    if len(deltas) < 2:
        return None
    if len(set(deltas)) == 1:  # no spread
        return (float(deltas[0]), float(deltas[0]))
    from scipy import stats

    with warnings.catch_warnings():  # nearly equal deltas: a spread of float rounding
        warnings.filterwarnings('ignore', 'Precision loss occurred', RuntimeWarning)
        low, high = stats.ttest_1samp(deltas, 0.0).confidence_interval(confidence)
    return (float(low), float(high))


@dataclass
class ComparisonRow:
    """One metric of one task over the pairs: values in percent, by seed.

    ``gc``/``baseline``: the sides' means; ``*_std``: their sample standard
    deviations (None below two runs); ``seed_deltas``: GC - baseline where
    both have a value; ``delta``: their mean; ``interval``: its interval
    (None below two pairs); ``verdict``: one of :data:`VERDICTS`,
    :data:`SPREAD_UNKNOWN` or ``'n/a'`` (no pair with both values);
    :data:`VERDICTS_LOWER_IS_BETTER` where not ``higher_is_better``.
    """

    task: str
    metric: str
    gc_values: dict[Seed, float]
    base_values: dict[Seed, float]
    paper_delta: Optional[float] = None
    confidence: float = 0.95
    higher_is_better: bool = True
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
            verdicts = VERDICTS if self.higher_is_better else VERDICTS_LOWER_IS_BETTER
            self.verdict = verdicts[0] if low > 0 else verdicts[2] if high < 0 else verdicts[1]


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
    """Check the runs' configs (:func:`~.runs.check_configs`), pair them
    (:func:`~.runs.pair_runs`), and summarize their metrics (:data:`~.runs.TASK_METRICS`:
    COCO AP, mIoU / mAcc / aAcc, top-1 / top-5 accuracy and top-1 error).

    Args:
        gc (RunResult | Sequence[RunResult]): The GC run(s).
        base (RunResult | Sequence[RunResult]): The baseline run(s).
        metafile (str, optional): ``configs/metafile.yml``, for the paper's deltas.
        model (str, optional): The metafile entry; it must exist. Defaults to
            the GC runs' config name, looked up quietly.
        ignore (Sequence[str]): More config keys allowed to differ.
        skipped (Sequence[tuple]): ``(path, reason)`` of runs left out before
            (:func:`~.runs.load_runs`), named in the report.
        confidence (float): Level of the delta's interval. Defaults to 0.95.

    Raises:
        ConfigMismatchError: If the configs differ in more than they may.
        ConfigError: If a side is empty, the runs cannot be paired
            (:func:`~.runs.pair_runs`), or ``model`` is not in the metafile.
    """
    gc_runs = [gc] if isinstance(gc, RunResult) else list(gc)
    base_runs = [base] if isinstance(base, RunResult) else list(base)
    for runs, side in ((gc_runs, 'GC'), (base_runs, 'baseline')):
        if not runs:
            left = '; '.join(f"'{p}': {why}" for p, why in skipped)
            left = left and f' (left out: {left})'
            raise ConfigError(f'No {side} run with metrics to compare{left}')
    check_configs(gc_runs, base_runs, ignore)
    pairs, unpaired = pair_runs(gc_runs, base_runs)
    name = model or pairs[0].gc.config_name
    paper = paper_deltas(metafile, name, required=model is not None)
    rows = []
    for task, metrics in TASK_METRICS.items():
        values = {m: [_values(pairs, side, task, m) for side in ('gc', 'base')] for m in metrics}
        if any(gc or base for gc, base in values.values()):  # the runs have this task
            rows += [
                ComparisonRow(
                    task, m, *values[m], paper.get((task, m)), confidence, spec.higher_is_better
                )
                for m, spec in metrics.items()
            ]
    if not rows:
        raise ConfigError(
            'None of the paired runs holds COCO bbox or segm metrics, nor mIoU / mAcc / aAcc '
            '(MMSegmentation) or top-1 / top-5 accuracy (MMPretrain).'
        )
    return Comparison(rows, pairs, unpaired, list(skipped), name if paper else None, confidence)


def _values(pairs: list[RunPair], side: str, task: str, metric: str) -> dict[Seed, float]:
    values = {pair.seed: getattr(pair, side).value(task, metric) for pair in pairs}
    return {seed: value for seed, value in values.items() if value is not None}
