"""The codebase of a config, from its ``default_scope`` (mmgc/runtime/codebases.py):
MMDetection's as before for none or ``mmgc``; another scope, a codebase that is not
installed, or a base config of one, ends the tools in one line naming what to
install (exit 2). The runs of each codebase: tests/tools/test_codebase_runs.py."""

from __future__ import annotations

import importlib
import importlib.util

import pytest

from mmgc.runtime.codebases import (
    CODEBASES,
    MissingCodebaseError,
    codebase_of,
    prepare_codebase,
    read_config,
)
from mmgc.runtime.entry_points import main_test, main_train
from mmgc.runtime.errors import ConfigError
from mmgc.version import UnsupportedVersionError
from tests.conftest import ROOT, codebase_installed

CLS_CONFIG = str(ROOT / 'tests/data/configs/mmpretrain/resnet18_tiny.py')
SEG_CONFIG = str(ROOT / 'tests/data/configs/mmseg/fcn_tiny.py')
needs_no_mmpretrain = pytest.mark.skipif(
    importlib.util.find_spec('mmpretrain') is not None,
    reason='MMPretrain is installed on this stack (the torch 2.1 one): its absence is '
    'tested on the newest stack',
)


@pytest.mark.parametrize(
    'scope, expected',
    [
        (None, 'mmdet'),
        ('mmgc', 'mmdet'),
        ('mmdet', 'mmdet'),
        ('mmseg', 'mmseg'),
        ('mmpretrain', 'mmpretrain'),
    ],
)
def test_the_codebase_is_the_default_scopes(scope, expected):
    assert codebase_of({} if scope is None else {'default_scope': scope}).scope == expected


def test_an_unknown_default_scope_names_the_valid_ones():
    with pytest.raises(ConfigError, match=r"default_scope 'mmocr' .* valid: mmdet, mmseg, mmpr"):
        codebase_of({'default_scope': 'mmocr'})


def test_the_tools_end_an_unknown_scope_in_one_line(tmp_path, capsys):
    config = tmp_path / 'ocr.py'
    config.write_text("default_scope = 'mmocr'\n")
    with pytest.raises(SystemExit) as exit_info:
        main_train([str(config), '--work-dir', str(tmp_path / 'w')])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("ConfigError: default_scope 'mmocr' is not a codebase"), lines


@needs_no_mmpretrain
@pytest.mark.parametrize('main', [main_train, main_test])
def test_a_missing_codebase_ends_in_one_line_naming_the_package(main, tmp_path, capsys):
    args = [CLS_CONFIG] + (['missing.pth'] if main is main_test else [])
    with pytest.raises(SystemExit) as exit_info:
        main([*args, '--work-dir', str(tmp_path / 'w')])
    assert exit_info.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith('MissingCodebaseError: ') and "pip install 'mmpretrain" in last, last


@needs_no_mmpretrain
def test_a_config_of_a_missing_codebase_without_its_bases(tmp_path):
    config = tmp_path / 'cls.py'
    config.write_text("default_scope = 'mmpretrain'\n")
    with pytest.raises(MissingCodebaseError, match=r"MMPretrain \(default_scope 'mmpretrain'\)"):
        prepare_codebase(codebase_of(read_config(str(config))))


def test_each_codebase_names_its_distribution():
    # what MMEngine's loader names in its error for a missing '<scope>::' base
    from mmengine.config.utils import MODULE2PACKAGE

    for scope, codebase in CODEBASES.items():
        assert MODULE2PACKAGE[scope] == codebase.distribution


@codebase_installed('mmseg')
def test_missing_data_of_a_segmentation_config_ends_in_one_line(tmp_path, capsys):
    """The data check reads MMSegmentation's ``data_prefix`` folders too."""
    missing = tmp_path / 'nowhere'
    options = [f'{s}_dataloader.dataset.data_root={missing}' for s in ('train', 'val', 'test')]
    with pytest.raises(SystemExit) as exit_info:
        main_train([SEG_CONFIG, '--work-dir', str(tmp_path / 'w'), '--cfg-options', *options])
    assert exit_info.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"MissingDataError: The data root '{missing}'"), last


@pytest.mark.parametrize(
    'scope', [pytest.param(s, marks=codebase_installed(s)) for s in ('mmseg', 'mmpretrain')]
)
def test_a_codebase_outside_the_tested_versions_is_refused(scope, monkeypatch):
    """An MMSegmentation or MMPretrain outside ``SUPPORTED_VERSIONS`` (the onedl
    forks' 1.3, here) is refused as the tools prepare it, naming both versions."""
    module = importlib.import_module(scope)
    prepare_codebase(CODEBASES[scope])  # the installed release is in the range
    monkeypatch.setattr(module, '__version__', '1.3.0')
    with pytest.raises(UnsupportedVersionError, match=rf'supports {scope} >=1\.2\.0, <1\.3\.0; '):
        prepare_codebase(CODEBASES[scope])
