"""mmgc.runtime.gc_stats: GCDiagnosticsHook's statistics read back through
mmgc.runtime.logs (a resumed run's files together), and their plot. (A real
run's: tests/engine/hooks/test_gc_diagnostics_hook.py.)"""

from __future__ import annotations

import json

import pytest

from mmgc.runtime.gc_stats import load_gc_stats, plot_gc_stats


def _scalars(work_dir, timestamp, records):
    vis = work_dir / timestamp / 'vis_data'
    vis.mkdir(parents=True)
    (vis / 'scalars.json').write_text(''.join(json.dumps(r) + '\n' for r in records))
    return vis / 'scalars.json'


def test_a_resumed_runs_statistics_and_their_plot(tmp_path):
    def stats(step, norm):
        names = [f'gc/{layer}/{gc}grad_' for layer in ('conv1', 'head/fc') for gc in ('', 'gc_')]
        return {**{f'{name}{s}': norm for name in names for s in ('norm', 'max')}, 'step': step}

    first = _scalars(tmp_path, '20240101_000000', [stats(2, 4.0), {'loss': 1.0, 'iter': 2}])
    first.write_text(first.read_text() + json.dumps(stats(4, 3.0)) + '\n')
    _scalars(tmp_path, '20240101_010000', [stats(4, 2.5), stats(6, 2.0)])  # resumed from 2
    gc = load_gc_stats(tmp_path)
    assert set(gc) == {'conv1', 'head/fc'}
    assert set(gc['head/fc']) == {'grad_norm', 'grad_max', 'gc_grad_norm', 'gc_grad_max'}
    assert gc['head/fc']['gc_grad_max'] == [(2, 4.0), (4, 2.5), (6, 2.0)]
    assert load_gc_stats(first)['conv1']['grad_norm'] == [(2, 4.0), (4, 3.0)]
    runs = {'with GC': gc, 'without GC': load_gc_stats(first)}
    out = plot_gc_stats(runs, tmp_path / 'fig' / 'fig4.png', gc_runs=('with GC',))
    assert out.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_runs_without_statistics_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=f'no vis_data/scalars.json under {tmp_path}'):
        load_gc_stats(tmp_path)
    _scalars(tmp_path, '20240101_000000', [{'loss': 1.0, 'iter': 1, 'step': 1}])
    with pytest.raises(FileNotFoundError, match='no gc/ statistics in .*: add GCDiagnosticsHook'):
        load_gc_stats(tmp_path)
