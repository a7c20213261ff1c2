"""tools/compare_ap.py (mmgc.runtime.entry_points.main_compare_ap): the report
printed and written, and the one-line exit-2 refusals that write nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
from mmengine.config import Config

from mmgc.runtime.metrics import write_metrics_file
from tests.conftest import load_tool


@pytest.fixture(scope='module')
def tool():
    return load_tool('compare_ap')


@pytest.fixture
def metrics_file(coco):
    """``metrics_file(folder, config, ap, seed)``: tools/test.py's file there."""

    def write(path: Path, cfg: Config, ap: float, seed: int) -> str:
        trained = Config(cfg.to_dict())
        trained.merge_from_dict({'randomness.seed': seed})
        return write_metrics_file(
            str(path / 'test_metrics.json'),
            coco(ap, ap),
            config='configs/x_gc.py',
            checkpoint='epoch_1.pth',
            config_text=cfg.pretty_text,
            train_config_text=trained.pretty_text,
            seed=seed,
        )

    return write


def test_tool_with_several_runs_per_side(tool, configs, metrics_file, tmp_path, capsys):
    gc_cfg, base_cfg = configs
    gc = [metrics_file(tmp_path / f'gc{s}', gc_cfg, 0.40 + s / 100, s) for s in (0, 1, 2)]
    base = [metrics_file(tmp_path / f'base{s}', base_cfg, 0.40, s) for s in (0, 1)]
    (tmp_path / 'running').mkdir()  # a run without metrics yet
    out = tmp_path / 'report'
    status = tool.main(
        ['--gc', *gc, str(tmp_path / 'running'), '--base', *base, '--out-dir', str(out)]
    )
    printed = capsys.readouterr().out
    assert status == 0
    assert '### bbox (AP in %)' in printed and '2 pairs of runs (seeds 0, 1)' in printed
    assert f"left out: GC run '{gc[2]}' (seed 2)" in printed
    assert f"left out: '{tmp_path / 'running'}'" in printed
    assert printed.endswith(
        f'markdown: {out}/ap_comparison.md\ncsv: {out}/ap_comparison.csv\n'
        f'seeds_csv: {out}/ap_seeds.csv\npng: {out}/ap_deltas.png\n'
    )
    assert (out / 'ap_comparison.md').read_text() in printed
    assert (out / 'ap_deltas.png').is_file() and (out / 'ap_seeds.csv').is_file()


@pytest.mark.parametrize(
    'change, extra, match',
    [
        (
            {'train_dataloader.batch_size': 3},
            [],
            'differ in more than the optimizer, in: train_dataloader.batch_size',
        ),
        ({}, ['--model', 'nope'], "--model 'nope' is not in"),
        ({}, ['--metafile', 'no/such.yml'], 'No such file'),
    ],
)
def test_tool_writes_nothing_on_refusal(
    tool, configs, metrics_file, tmp_path, capsys, change, extra, match
):
    gc_cfg, base_cfg = configs
    base_cfg = Config(base_cfg.to_dict())
    base_cfg.merge_from_dict(change)
    gc = metrics_file(tmp_path / 'gc', gc_cfg, 0.4, 0)
    base = metrics_file(tmp_path / 'base', base_cfg, 0.4, 0)
    out = tmp_path / 'report'
    assert tool.main([gc, base, '--out-dir', str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and err.startswith('error: ') and match in err
    assert not out.exists()


@pytest.mark.parametrize(
    'argv, match',
    [
        (['a'], 'expected two runs, GC and BASE; got 1'),
        (['a', 'b', '--gc', 'c'], 'either as GC BASE or with --gc/--base'),
        (['--gc', 'a'], 'give the runs: --gc RUN'),
    ],
)
def test_tool_argument_errors(tool, argv, match, capsys):
    with pytest.raises(SystemExit) as exit_info:
        tool.parse_args(argv)
    assert exit_info.value.code == 2
    assert match in capsys.readouterr().err
