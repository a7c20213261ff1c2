"""mmgc.runtime.compare.render: the Markdown, the two CSVs and the delta figure."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from mmgc.runtime.compare import (
    CSV_COLUMNS,
    compare_runs,
    comparison_to_markdown,
    delta_figure,
    markdown_table,
    write_report,
)


def test_markdown_table():
    assert markdown_table(('a', 'b'), [(1, 'x')], 'r') == ['| a | b |', '|---:|---|', '| 1 | x |']


def test_markdown_of_one_run_per_side(runs, metafile):
    gc, base = runs('gc', {0: 0.412}), runs('base', {0: 0.405})
    gc[0].config_name = 'mask_rcnn_r50_fpn_gc'
    markdown = comparison_to_markdown(compare_runs(gc, base, metafile=metafile))
    assert markdown.startswith('1 pair of runs (seeds 0), paired by seed:\n\n')
    assert '| 0 | `gc0` | `base0` |' in markdown
    assert "the paper's w/ GC - w/o GC (mask_rcnn_r50_fpn_gc; n/a where" in markdown
    assert (
        '| metric | GC | baseline | delta | 95% interval | per seed | paper delta | verdict |'
        in (markdown)
    )
    assert '|---|---:|---:|---:|---:|---|---:|---|' in markdown
    assert '| AP | 41.2 | 40.5 | +0.70 | unknown | 0: +0.7 | +0.5 | spread unknown (1 seed) |' in (
        markdown
    )
    assert '| APm | n/a | n/a | n/a | n/a | n/a | n/a | n/a |' in markdown
    last = '- one run per side: the spread over seeds is unknown, so the delta may be noise;'
    assert markdown.endswith(f'{last} pass several runs per side (--gc RUN... --base RUN...).\n')


def test_markdown_names_both_seeds_and_the_runs_left_out(runs):
    one = compare_runs(runs('gc', {159606443: 0.42}), runs('base', {1021236518: 0.40}))
    markdown = comparison_to_markdown(one)
    label = '159606443 (GC) / 1021236518 (baseline)'
    assert f'1 pair of runs (seeds {label}), the only run of each side:' in markdown
    assert f'| {label} | `gc159606443` | `base1021236518` |' in markdown
    assert f'| {label}: +2.0 |' in markdown
    assert '(no metafile entry for this config; n/a where the paper has no such number)' in markdown
    several = compare_runs(runs('gc', {0: 0.40, 1: 0.42, 5: 0.9}), runs('base', {0: 0.39, 1: 0.4}))
    markdown = comparison_to_markdown(several)
    assert '2 pairs of runs (seeds 0, 1), paired by seed:' in markdown
    assert "- left out: GC run 'gc5' (seed 5): the other side has no run with that seed" in markdown


def test_report_files_agree_with_the_rows(runs, row, tmp_path):
    comparison = compare_runs(
        runs('gc', {0: 0.42, 1: 0.43, 2: 0.44}), runs('base', {0: 0.40, 1: 0.41, 2: 0.425})
    )
    paths = write_report(comparison, str(tmp_path / 'out'))
    assert sorted(Path(p).name for p in paths.values()) == [
        'ap_comparison.csv',
        'ap_comparison.md',
        'ap_deltas.png',
        'ap_seeds.csv',
    ]
    with open(paths['csv'], newline='') as f:
        reader = csv.DictReader(f)
        rows = {(r['task'], r['metric']): r for r in reader}
    assert reader.fieldnames == CSV_COLUMNS['csv'] and len(rows) == 12
    ap = row(comparison)
    got = rows['bbox', 'AP']
    assert got['gc'] == f'{ap.gc:.3f}' and got['gc_std'] == f'{ap.gc_std:.3f}'
    assert float(got['delta']) == pytest.approx(ap.delta, abs=1e-3)
    assert float(got['ci_low']) == pytest.approx(ap.interval[0], abs=1e-3)
    assert float(got['ci_high']) == pytest.approx(ap.interval[1], abs=1e-3)
    assert got['verdict'] == ap.verdict == 'GC higher'
    assert (got['gc_runs'], got['baseline_runs'], got['pairs']) == ('3', '3', '3')
    assert got['paper_delta'] == '' and got['confidence'] == '0.95'
    assert rows['bbox', 'APm']['delta'] == '' and rows['bbox', 'APm']['verdict'] == 'n/a'
    with open(paths['seeds_csv'], newline='') as f:
        reader = csv.DictReader(f)
        seeds = [r for r in reader if (r['task'], r['metric']) == ('bbox', 'AP')]
    assert reader.fieldnames == CSV_COLUMNS['seeds_csv']
    assert [(r['seed'], r['gc_run'], r['baseline_run']) for r in seeds] == [
        ('0', 'gc0', 'base0'),
        ('1', 'gc1', 'base1'),
        ('2', 'gc2', 'base2'),
    ]
    assert [float(r['delta']) for r in seeds] == pytest.approx([2.0, 2.0, 1.5])
    markdown = Path(paths['markdown']).read_text()
    assert markdown == comparison_to_markdown(comparison)
    assert '### bbox (AP in %)' in markdown and '### segm (AP in %)' in markdown
    assert '0: +2.0, 1: +2.0, 2: +1.5' in markdown
    assert Path(paths['png']).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_a_pair_of_unknown_seed_has_an_empty_seed_cell(runs, tmp_path):
    paths = write_report(compare_runs(runs('gc', {1: 0.4}), runs('base', {2: 0.3})), str(tmp_path))
    with open(paths['seeds_csv'], newline='') as f:
        assert {r['seed'] for r in csv.DictReader(f)} == {''}


def test_delta_plot_shows_seeds_means_and_the_paper(runs, metafile):
    """(Its legend's place: tests/runtime/test_demo.py, with the demo's plots.)"""
    gc, base = runs('gc', {0: 0.42, 1: 0.43}), runs('base', {0: 0.40, 1: 0.44})
    for run in gc + base:
        run.config_name = 'mask_rcnn_r50_fpn_gc'
    fig = delta_figure(compare_runs(gc, base, metafile=metafile), 'r50')
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == ['each seed', 'mean, 95% interval', "paper's delta"]
    assert fig.get_suptitle() == 'r50: GC vs baseline, seeds 0, 1'
    assert [ax.get_title() for ax in fig.axes] == ['bbox', 'segm']
    # each seed's delta of bbox AP is drawn (+2.0 and -1.0 points)
    points = [
        tuple(xy)
        for collection in fig.axes[0].collections
        if collection.get_label() == 'each seed'
        for xy in collection.get_offsets()
    ]
    assert sorted(round(y, 6) for x, y in points if x < 0.5) == pytest.approx([-1.0, 2.0])
