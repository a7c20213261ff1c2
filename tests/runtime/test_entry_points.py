"""The tools' main functions (mmgc.runtime.entry_points), which the console
scripts and the tools/*.py shims both call: the same function, and a user's
error in compare_ap ends in one line and exit status 2 with nothing written."""

from __future__ import annotations

import ast
import os
import subprocess
import sys

import pytest

from mmgc.mim import configs_root
from mmgc.runtime import entry_points
from tests.conftest import ROOT, load_tool


@pytest.mark.parametrize(
    'tool, function',
    [
        ('train', entry_points.main_train),
        ('test', entry_points.main_test),
        ('compare_ap', entry_points.main_compare_ap),
        ('plot_gc_stats', entry_points.main_plot_gc_stats),
    ],
)
def test_tools_are_shims_over_the_entry_points(tool, function):
    assert load_tool(tool).main is function


def test_compare_ap_reads_the_shipped_metafile_by_default():
    args = entry_points.parse_compare_ap_args(['gc_run', 'base_run'])
    assert args.metafile == str(configs_root() / 'metafile.yml')
    assert os.path.isfile(args.metafile)
    assert (args.gc, args.base) == (['gc_run'], ['base_run'])


@pytest.mark.parametrize(
    'runs, match',
    [
        (['no_such_run', 'no_such_base'], "'no_such_run' is neither a work dir nor a metrics file"),
        (['empty_gc', 'empty_base'], 'No GC run with metrics to compare'),
    ],
    ids=['missing run', 'no run with metrics'],
)
def test_compare_ap_user_errors_exit_2_in_one_line(tmp_path, capsys, monkeypatch, runs, match):
    monkeypatch.chdir(tmp_path)
    (tmp_path / 'empty_gc').mkdir()
    (tmp_path / 'empty_base').mkdir()
    out = tmp_path / 'report'
    assert entry_points.main_compare_ap([*runs, '--out-dir', str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and err.startswith('error: ') and match in err
    assert not out.exists()


def test_compare_ap_bad_command_line_exits_2(capsys):
    with pytest.raises(SystemExit) as info:
        entry_points.main_compare_ap(['only_one_run'])
    assert info.value.code == 2
    assert 'expected two runs, GC and BASE; got 1' in capsys.readouterr().err


def test_training_and_testing_load_no_comparison_or_plotting_code():
    """What ``tools/train.py`` and ``tools/test.py`` import (their entry points):
    not the comparison (SciPy's statistics, the report) nor the diagnostics plot."""
    probe = (
        'import sys, mmgc.runtime.entry_points; '
        "print(sorted(m for m in sys.modules if m.startswith('mmgc.runtime')))"
    )
    out = subprocess.run(
        [sys.executable, '-c', probe], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout
    loaded = ast.literal_eval(out.strip().splitlines()[-1])
    assert 'mmgc.runtime.cli' in loaded
    assert not [
        m for m in loaded if m.startswith(('mmgc.runtime.compare', 'mmgc.runtime.gc_stats'))
    ]


def test_the_cards_command_starts_with_mmgcs_own_words():
    """``python tools/train.py configs/mask_rcnn_r50_fpn_gc.py`` without COCO: its
    whole stderr is mmgc's one line (MMEngine's two pkg_resources warnings,
    raised as the mmdet:: bases load, are filtered by their exact message)."""
    env = {k: v for k, v in os.environ.items() if k not in ('PYTHONWARNINGS', 'MMGC_DEBUG')}
    proc = subprocess.run(
        [sys.executable, 'tools/train.py', 'configs/mask_rcnn_r50_fpn_gc.py'],
        cwd=ROOT,
        env={**env, 'PYTHONPATH': str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith('MissingDataError: '), proc.stderr[:2000]
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr[:2000]


def test_only_the_known_upstream_warnings_are_hidden():
    import warnings

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter('always')
        entry_points.quiet_known_upstream_warnings()
        warnings.warn(
            'pkg_resources is deprecated as an API. See https://setuptools.pypa.io/',
            UserWarning,
            stacklevel=2,
        )
        warnings.warn('pkg_resources is deprecated as an API.', DeprecationWarning, stacklevel=2)
        warnings.warn('another UserWarning about pkg_resources', UserWarning, stacklevel=2)
    assert [(w.category, str(w.message)) for w in seen] == [
        (DeprecationWarning, 'pkg_resources is deprecated as an API.'),
        (UserWarning, 'another UserWarning about pkg_resources'),
    ]
