"""mmgc.runtime.compare.stats: means, spreads, per-seed deltas, the paired
interval against a float64 reference from the t formula, and the verdicts."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest
from scipy import stats

from mmgc.runtime.compare import SPREAD_UNKNOWN, RunResult, compare_runs, paired_interval
from mmgc.runtime.errors import ConfigError

# Student's t quantiles t(0.975, df), from printed tables: an independent
# reference for the interval.
T975 = {1: 12.706204736174707, 2: 4.302652729911275, 3: 3.182446305284263}


def _t_interval(deltas, confidence):
    r"""The reference: :math:`\bar d \pm t_{(1+c)/2,\,n-1}\, s_d / \sqrt n` in float64."""
    d = np.asarray(deltas, dtype=np.float64)
    half = stats.t.ppf((1 + confidence) / 2, d.size - 1) * d.std(ddof=1) / math.sqrt(d.size)
    return (d.mean() - half, d.mean() + half)


@pytest.mark.parametrize('confidence', [0.5, 0.9, 0.95, 0.99])
@pytest.mark.parametrize(
    'deltas',
    [[1.0, 3.0], [1.1, -0.2, 2.2], [0.1, 0.2, 0.15, 0.5], list(np.linspace(-1.3, 2.9, 10))],
)
def test_paired_interval_is_the_t_formula(deltas, confidence):
    low, high = paired_interval(deltas, confidence)
    assert isinstance(low, float) and isinstance(high, float)
    assert (low, high) == pytest.approx(_t_interval(deltas, confidence), rel=1e-12, abs=1e-12)
    if confidence == 0.95 and len(deltas) - 1 in T975:  # the printed table
        half = T975[len(deltas) - 1] * statistics.stdev(deltas) / math.sqrt(len(deltas))
        mean = statistics.mean(deltas)
        assert (low, high) == pytest.approx((mean - half, mean + half), rel=1e-9)


def test_paired_interval_edge_cases():
    assert paired_interval([0.5]) is None and paired_interval([]) is None
    assert paired_interval([0.3, 0.3, 0.3]) == (0.3, 0.3)  # no spread: zero width
    with pytest.raises(ValueError, match=r'confidence must be in \(0, 1\); got 1.5'):
        paired_interval([1.0, 2.0], confidence=1.5)


def test_means_spread_deltas_and_interval_against_references(runs, row):
    gc_ap = {0: 0.412, 1: 0.405, 2: 0.431}
    base_ap = {0: 0.401, 1: 0.407, 2: 0.409}
    comparison = compare_runs(runs('gc', gc_ap), runs('base', base_ap))
    ap = row(comparison)
    gc, base = [100 * gc_ap[s] for s in (0, 1, 2)], [100 * base_ap[s] for s in (0, 1, 2)]
    deltas = [g - b for g, b in zip(gc, base)]
    assert ap.gc == pytest.approx(statistics.mean(gc))
    assert ap.baseline == pytest.approx(statistics.mean(base))
    assert ap.gc_std == pytest.approx(statistics.stdev(gc))
    assert ap.baseline_std == pytest.approx(statistics.stdev(base))
    assert ap.seed_deltas == pytest.approx(dict(zip((0, 1, 2), deltas)))
    assert ap.delta == pytest.approx(statistics.mean(deltas))
    assert ap.interval == pytest.approx(_t_interval(deltas, 0.95))
    assert ap.verdict == 'no clear difference'  # deltas +1.1, -0.2, +2.2: it contains zero
    # APm is -1 (no such objects) in every run: n/a everywhere
    apm = row(comparison, 'bbox', 'APm')
    assert apm.gc is None and apm.delta is None and apm.verdict == 'n/a'
    assert {r.task for r in comparison.rows} == {'bbox', 'segm'}
    assert row(compare_runs(runs('gc', gc_ap), runs('base', base_ap), confidence=0.5)).interval == (
        pytest.approx(_t_interval(deltas, 0.5))
    )


@pytest.mark.parametrize(
    'gc_ap, verdict',
    [
        ({0: 0.42, 1: 0.43, 2: 0.44, 3: 0.425}, 'GC higher'),
        ({0: 0.38, 1: 0.39, 2: 0.40, 3: 0.385}, 'GC lower'),
        ({0: 0.41, 1: 0.40, 2: 0.43, 3: 0.395}, 'no clear difference'),
    ],
)
def test_verdicts_follow_the_interval(runs, row, gc_ap, verdict):
    base_ap = {0: 0.40, 1: 0.41, 2: 0.42, 3: 0.405}
    ap = row(compare_runs(runs('gc', gc_ap), runs('base', base_ap)))
    low, high = ap.interval
    assert (low, high) == pytest.approx(_t_interval(list(ap.seed_deltas.values()), 0.95))
    assert ap.verdict == verdict
    assert (low > 0) == (verdict == 'GC higher') and (high < 0) == (verdict == 'GC lower')


def test_one_run_per_side_says_the_spread_is_unknown(configs, coco, row, metafile):
    gc_cfg, base_cfg = configs
    comparison = compare_runs(
        RunResult('gc.json', coco(0.412, 0.376), gc_cfg, 'mask_rcnn_r50_fpn_gc'),
        RunResult('base.json', coco(0.405, 0.370), base_cfg, 'mask_rcnn_r50_fpn'),
        metafile=metafile,
    )
    ap = row(comparison)
    assert ap.gc == pytest.approx(41.2) and ap.delta == pytest.approx(0.7)
    assert ap.gc_std is None and ap.interval is None
    assert ap.verdict == SPREAD_UNKNOWN
    assert comparison.model == 'mask_rcnn_r50_fpn_gc'
    assert ap.paper_delta == pytest.approx(0.5)  # Table 6, R50: 37.9 - 37.4
    assert row(comparison, 'bbox', 'APs').paper_delta is None
    (note,) = comparison.notes()  # same seed: nothing said of seeds
    assert 'one run per side: the spread over seeds is unknown' in note


def test_one_run_per_side_with_different_seeds(runs, row):
    comparison = compare_runs(runs('gc', {159606443: 0.42}), runs('base', {1021236518: 0.40}))
    assert comparison.seeds == [None]
    assert row(comparison).delta == pytest.approx(2.0)
    seeds, spread = comparison.notes()
    assert 'paired although their seeds differ (GC seed 159606443, baseline seed 1021236518)' in (
        seeds
    )
    assert 'spread over seeds is unknown' in spread


def test_unpaired_seeds_are_named_and_left_out(runs, row):
    comparison = compare_runs(
        runs('gc', {0: 0.40, 1: 0.42, 5: 0.9}),
        runs('base', {0: 0.39, 1: 0.40, 7: 0.1}),
        skipped=[('running', 'no metrics yet')],
    )
    assert comparison.seeds == [0, 1]
    assert row(comparison).gc == pytest.approx(41.0)  # seed 5's 90 is not in the mean
    assert row(comparison).baseline == pytest.approx(39.5)
    assert comparison.notes() == [
        "left out: GC run 'gc5' (seed 5): the other side has no run with that seed",
        "left out: baseline run 'base7' (seed 7): the other side has no run with that seed",
        "left out: 'running': no metrics yet",
    ]


def test_the_runs_are_checked_before_they_are_compared(runs, coco, configs, metafile):
    """ConfigErrors: the tools end them in one line with exit status 2."""
    with pytest.raises(ConfigError, match=r"No GC run with metrics to compare \(left out: 'r': x"):
        compare_runs([], runs('base', {0: 0.4}), skipped=[('r', 'x')])
    with pytest.raises(ConfigError, match='differ in more than the optimizer'):
        compare_runs(runs('gc', {0: 0.4}), runs('base', {0: 0.4}, **{'model.neck': 1}))
    with pytest.raises(ConfigError, match='No seed is on both sides'):
        compare_runs(runs('gc', {0: 0.4, 1: 0.4}), runs('base', {2: 0.4}))
    with pytest.raises(ConfigError, match="--model 'mask_rcnn_r51' is not in"):
        compare_runs(
            runs('gc', {0: 0.4}), runs('base', {0: 0.4}), metafile=metafile, model='mask_rcnn_r51'
        )
    gc_cfg, base_cfg = configs
    no_coco = [
        RunResult(s, {'coco/bbox_mAP': -1.0}, c) for s, c in (('g', gc_cfg), ('b', base_cfg))
    ]
    with pytest.raises(ConfigError, match='None of the paired runs holds COCO bbox or segm'):
        compare_runs(*no_coco)


def test_a_chosen_metafile_entry_and_box_only_runs(configs, coco, row, metafile):
    gc_cfg, base_cfg = configs
    chosen = compare_runs(
        RunResult('a', coco(0.3), gc_cfg),
        RunResult('b', coco(0.2), base_cfg),
        metafile=metafile,
        model='faster_rcnn_r50_fpn_gc',
    )
    assert chosen.model == 'faster_rcnn_r50_fpn_gc'
    assert row(chosen).paper_delta == pytest.approx(37.0 - 36.4)  # Table 5, R50
    assert {r.task for r in chosen.rows} == {'bbox'}  # no segm metrics: no segm rows
