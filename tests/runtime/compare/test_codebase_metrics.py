"""The comparison in each codebase's metric (issue 29): MMSegmentation's mIoU /
mAcc / aAcc and MMPretrain's top-1 / top-5 accuracy and top-1 error, with the
pairing, intervals and verdicts of COCO AP; the direction is the metric's, and
the report names the metric. The end-to-end runs: tests/tools/test_codebase_runs.py."""

from __future__ import annotations

import pytest
import yaml

from mmgc.runtime.compare import (
    TASK_METRICS,
    VERDICTS,
    VERDICTS_LOWER_IS_BETTER,
    ComparisonRow,
    RunResult,
    compare_runs,
    comparison_to_markdown,
    load_run,
    paper_deltas,
)
from mmgc.runtime.metrics import write_metrics_file


def _runs(configs, side: str, metrics_by_seed: dict) -> list[RunResult]:
    cfg = configs[side != 'gc']
    out = []
    for seed, metrics in metrics_by_seed.items():
        run_cfg = type(cfg)(cfg.to_dict())
        run_cfg.merge_from_dict({'randomness.seed': seed})
        out.append(RunResult(f'{side}{seed}', metrics, run_cfg, f'{side}_cfg'))
    return out


def _seg(miou: float) -> dict:
    return {'mIoU': miou, 'mAcc': miou + 10.0, 'aAcc': 90.0 + miou / 10}


def test_segmentation_compares_miou_macc_aacc_in_their_percent(configs):
    gc = _runs(configs, 'gc', {0: _seg(41.0), 1: _seg(43.0), 2: _seg(42.0)})
    base = _runs(configs, 'base', {0: _seg(40.0), 1: _seg(41.5), 2: _seg(40.5)})
    comparison = compare_runs(gc, base)
    rows = {r.metric: r for r in comparison.rows}
    assert [r.task for r in comparison.rows] == ['sem_seg'] * 3
    assert list(rows) == ['mIoU', 'mAcc', 'aAcc']
    assert rows['mIoU'].gc == pytest.approx(42.0)  # IoUMetric's percent, not x 100
    assert rows['mIoU'].seed_deltas == pytest.approx({0: 1.0, 1: 1.5, 2: 1.5})
    assert rows['mIoU'].verdict == VERDICTS[0] and rows['mIoU'].interval[0] > 0
    markdown = comparison_to_markdown(comparison)
    assert '### sem_seg (mIoU, mAcc, aAcc in %)' in markdown
    assert 'sem_seg: mIoU, mAcc, aAcc in percent.' in markdown
    assert 'COCO AP' not in markdown


def test_classification_reads_top1_and_its_error_where_lower_is_better(configs):
    top1 = lambda *values: {s: {'accuracy/top1': v} for s, v in enumerate(values)}  # noqa: E731
    gc = _runs(configs, 'gc', top1(80.0, 81.0, 80.5))
    base = _runs(configs, 'base', top1(78.0, 78.5, 78.25))
    rows = {r.metric: r for r in compare_runs(gc, base).rows}
    assert list(rows) == list(TASK_METRICS['cls'])
    assert rows['top-1'].delta == pytest.approx(2.25) and rows['top-1'].verdict == 'GC higher'
    error = rows['top-1 err']
    assert error.gc == pytest.approx(19.5) and error.delta == pytest.approx(-2.25)
    assert not error.higher_is_better and error.verdict == VERDICTS_LOWER_IS_BETTER[2]
    assert rows['top-5'].verdict == 'n/a'  # MMPretrain's Accuracy with topk=(1,): no top-5
    markdown = comparison_to_markdown(compare_runs(gc, base))
    assert '### cls (top-1 and top-5 accuracy, top-1 error in %)' in markdown
    assert "Lower is better for top-1 err: its verdicts are 'GC lower (better)'" in markdown


@pytest.mark.parametrize(
    'deltas, higher, verdict',
    [
        ([1.0, 1.2, 1.1], True, 'GC higher'),
        ([1.0, 1.2, 1.1], False, 'GC higher (worse)'),
        ([-1.0, -1.2, -1.1], False, 'GC lower (better)'),
        ([-1.0, 1.0, 0.5], False, 'no clear difference'),
    ],
)
def test_the_verdict_reads_the_direction_of_the_metric(deltas, higher, verdict):
    gc = {seed: 50.0 + d for seed, d in enumerate(deltas)}
    base = dict.fromkeys(range(len(deltas)), 50.0)
    row = ComparisonRow('cls', 'm', gc, base, higher_is_better=higher)
    assert row.verdict == verdict


def test_paper_deltas_of_segmentation_and_classification_rows(tmp_path):
    metafile = tmp_path / 'metafile.yml'
    results = [
        dict(
            Metrics={'Top 1 Accuracy': 78.82, 'Top 1 Error': 21.18},
            **{'Paper Baseline': {'Top 1 Accuracy': 76.87, 'Top 1 Error': 23.13}},
        ),
        dict(
            Metrics={'mIoU': 40.0, 'Other': 1.0}, **{'Paper Baseline': {'mIoU': 39.0, 'Other': 0}}
        ),
    ]
    models = [dict(Name='r18_gc', Config='configs/x/r18_gc.py', Results=results)]
    metafile.write_text(yaml.safe_dump(dict(Models=models)))
    assert paper_deltas(str(metafile), 'r18_gc') == pytest.approx(
        {('cls', 'top-1'): 1.95, ('cls', 'top-1 err'): -1.95, ('sem_seg', 'mIoU'): 1.0}
    )


def test_a_metrics_file_of_each_codebase_loads(tmp_path):
    for name, metrics, task, metric, want in (
        ('seg', {'aAcc': 90.0, 'mIoU': 40.0, 'mAcc': 50.0}, 'sem_seg', 'mIoU', 40.0),
        ('cls', {'accuracy/top1': 55.5}, 'cls', 'top-1 err', 44.5),
    ):
        path = str(tmp_path / f'{name}.json')
        write_metrics_file(path, metrics, config='c.py', checkpoint='k.pth', config_text='')
        assert load_run(path).value(task, metric) == pytest.approx(want)
