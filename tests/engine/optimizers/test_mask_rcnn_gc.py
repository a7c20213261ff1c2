"""SGDGC and the GC constructor on a real MMDetection Mask R-CNN (ResNet-18),
built from the docs/configs.md's config snippet (which inherits MMDetection's), with
the tests' tiny sizes."""

import math

import pytest
import torch
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper
from mmengine.registry import DefaultScope

import mmgc  # noqa: F401  (registers SGDGC and GCOptimWrapperConstructor)
from mmgc import SGDGC
from tests.conftest import ROOT, TEST_CONFIGS, detection_batch

mmdet = pytest.importorskip('mmdet')


def _readme_config() -> str:
    """docs/configs.md's first config block (the paper's form), as written."""
    text = (ROOT / 'docs' / 'configs.md').read_text()
    start = text.index('```python\n', text.index('## SGDGC and the constructor')) + len(
        '```python\n'
    )
    return text[start : text.index('```\n', start)]


#: The README's config with the tests' tiny sizes (ResNet-18 from scratch,
#: narrow heads: the same modules as R50 Mask R-CNN), as the README
#: stand-ins apply them (tests/data/configs/readme/).
TINY = f"""
_base_ = ['./readme_config.py', '{TEST_CONFIGS / 'readme' / 'tiny.py'}']
globals().update(_base_.readme_tiny)
"""
BASELINE_OPTIM = """
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='SGD', lr=0.02, momentum=0.9, weight_decay=1e-4))
"""


def _build(tmp_path, gc: bool):
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    register_all_modules(init_default_scope=False)
    (tmp_path / 'readme_config.py').write_text(_readme_config())
    path = tmp_path / 'mask_rcnn_r18_fpn.py'
    path.write_text(TINY if gc else TINY + BASELINE_OPTIM)
    cfg = Config.fromfile(str(path))
    torch.manual_seed(0)
    with DefaultScope.overwrite_default_scope('mmdet'):
        model = MODELS.build(cfg.model)
        model.init_weights()
        wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    return model, wrapper


def _conv_fc_weights(model):
    return {
        f'{name}.weight': (
            mod.weight,
            1 if isinstance(mod, torch.nn.ConvTranspose2d) else 0,
        )
        for name, mod in model.named_modules()
        if isinstance(mod, (torch.nn.Linear, torch.nn.modules.conv._ConvNd))
        and mod.weight.requires_grad
    }


def _train_and_measure(model, wrapper, weights, steps=3):
    """Train ``steps`` iterations; return, per weight, whether every output
    unit's weight sum stayed within float32 rounding of its initial value,
    and whether the weight moved at all."""
    initial = {n: p.detach().double().sum(_dims(p, d)) for n, (p, d) in weights.items()}
    start = {n: p.detach().clone() for n, (p, _) in weights.items()}
    model.train()
    for step in range(steps):
        losses = model.train_step(detection_batch(step), wrapper)
        assert all(math.isfinite(float(v)) for v in losses.values()), losses
        assert float(losses['loss']) > 0
    eps = torch.finfo(torch.float32).eps
    kept, moved = {}, {}
    for name, (p, dim) in weights.items():
        dims = _dims(p, dim)
        after = p.detach().double().sum(dims)
        bound = steps * eps * p.detach().abs().double().sum(dims) + 1e-12
        kept[name] = bool(torch.all((after - initial[name]).abs() <= bound))
        moved[name] = not torch.equal(p.detach(), start[name])
    return kept, moved


@pytest.mark.slow
def test_mask_rcnn_trains_with_gc_and_keeps_weight_sums(tmp_path):
    model, wrapper = _build(tmp_path, gc=True)
    optimizer = wrapper.optimizer
    assert isinstance(optimizer, SGDGC)
    # lean groups: at most one per distinct setting, never one per tensor
    assert len(optimizer.param_groups) <= 3

    names = {id(p): n for n, p in model.named_parameters()}
    centralized = {
        names[id(p)]: g['gc_dim']
        for g in optimizer.param_groups
        if g['gc']
        for p in g['params']
        if p.dim() > 1 and p.requires_grad  # frozen weights are kept too, with GC flags
    }
    weights = _conv_fc_weights(model)
    # every trainable conv and FC weight, with its output-unit dim, nothing else
    assert centralized == {n: d for n, (_, d) in weights.items()}
    assert centralized['roi_head.mask_head.upsample.weight'] == 1  # the deconv

    kept, moved = _train_and_measure(model, wrapper, weights)
    assert all(kept.values()), [n for n, ok in kept.items() if not ok]
    assert sum(moved.values()) > 0.9 * len(moved)


@pytest.mark.slow
def test_mask_rcnn_baseline_drifts(tmp_path):
    """The control: with torch's SGD the same sums leave the bound."""
    model, wrapper = _build(tmp_path, gc=False)
    assert type(wrapper.optimizer) is torch.optim.SGD
    kept, moved = _train_and_measure(model, wrapper, _conv_fc_weights(model))
    drifted = [n for n, ok in kept.items() if not ok and moved[n]]
    assert len(drifted) > 0.8 * len(kept)


def _dims(p, out_dim):
    return tuple(d for d in range(p.dim()) if d != out_dim)
