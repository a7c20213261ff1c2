"""The ``mmgc::`` config scope (mmgc.mim) and the ``mmgc`` registry scope
(mmgc.registry), in this environment (the editable install, whose
``mmgc/.mim`` links to ``configs/``). tests/test_wheel.py checks the same
from a built wheel."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from mmengine.config.utils import MODULE2PACKAGE
from mmengine.registry import LOOPS, PARAM_SCHEDULERS, TRANSFORMS, DefaultScope

import mmgc
from mmgc.mim import CONFIG_SCOPE, configs_root, register_config_scope
from tests.conftest import ROOT


def test_import_registers_the_config_scope():
    assert MODULE2PACKAGE[CONFIG_SCOPE] == 'mmgc.mim'


def test_an_existing_scope_entry_is_kept():
    saved = MODULE2PACKAGE.pop(CONFIG_SCOPE)
    try:
        MODULE2PACKAGE[CONFIG_SCOPE] = 'someone_else'
        register_config_scope()
        assert MODULE2PACKAGE[CONFIG_SCOPE] == 'someone_else'
    finally:
        MODULE2PACKAGE[CONFIG_SCOPE] = saved


def test_configs_root_is_the_repositorys_configs():
    root = configs_root()
    assert (root / 'metafile.yml').is_file()
    assert root.resolve() == (ROOT / 'configs').resolve()
    assert root.parent.parent == Path(mmgc.__file__).resolve().parent  # mmgc/.mim/configs


def _user_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / 'my_config.py'
    path.write_text(text)
    return path


def test_user_config_inherits_mmgc_and_its_mmdet_bases(tmp_path):
    cfg = Config.fromfile(
        _user_config(tmp_path, "_base_ = 'mmgc::mmdet/mask_rcnn_r50_fpn_gc.py'\n")
    )
    expected = Config.fromfile(ROOT / 'configs' / 'mask_rcnn_r50_fpn_gc.py')
    assert cfg.optim_wrapper.to_dict() == expected.optim_wrapper.to_dict()
    assert cfg.model.to_dict() == expected.model.to_dict()
    assert cfg.optim_wrapper.optimizer.type == 'SGDGC'


def test_a_top_level_config_needs_a_folder_in_mmengine_0_10(tmp_path):
    """What the README says: MMEngine 0.10 refuses a scope::path without a folder."""
    config = _user_config(tmp_path, "_base_ = 'mmgc::mask_rcnn_r50_fpn_gc.py'\n")
    with pytest.raises(ValueError, match='specify the package name and relative config path'):
        Config.fromfile(config)


def test_a_missing_mmgc_config_is_named(tmp_path):
    config = _user_config(tmp_path, "_base_ = 'mmgc::mmdet/baselines/no_such_config.py'\n")
    with pytest.raises(
        FileNotFoundError, match=r'\.mim/configs/mmdet/baselines/no_such_config\.py'
    ):
        Config.fromfile(config)


def test_dicts_of_an_mmgc_base_build_with_mmdetections_types(tmp_path):
    """MMEngine gives the demo's train_cfg, param_scheduler and pipelines the
    scope ``mmgc``; mmgc.registry resolves it as MMDetection's scope."""
    cfg = Config.fromfile(
        _user_config(tmp_path, "_base_ = 'mmgc::demo/mask_rcnn_r18_fpn_shapes_gc.py'\n")
    )
    scoped = [cfg.train_cfg, *cfg.param_scheduler, *cfg.train_pipeline]
    assert {d.get('_scope_') for d in scoped} == {CONFIG_SCOPE}
    with DefaultScope.overwrite_default_scope('mmdet'):
        # PackDetInputs is MMDetection's: not found in MMEngine's root registry
        packer = TRANSFORMS.build(cfg.train_pipeline[-1].to_dict())
        assert type(packer).__module__.startswith('mmdet.')
        assert LOOPS.get(cfg.train_cfg.type) is not None
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=0.1)
        scheduler = PARAM_SCHEDULERS.build({**cfg.param_scheduler[0], 'optimizer': optimizer})
        assert type(scheduler).__name__ == 'LinearLR'
