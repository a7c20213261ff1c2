"""Fixtures of the comparison's tests: CocoMetric-like results, runs of a
small config, the tiny Mask R-CNN twins and the real metafile."""

from __future__ import annotations

import pytest
from mmengine.config import Config

from mmgc.runtime.compare import RunResult


def _coco(bbox: float, segm: float | None = None) -> dict:
    out = {}
    for task, ap in (('bbox', bbox), ('segm', segm)):
        if ap is not None:
            suffixes = dict(mAP=ap, mAP_50=ap + 0.1, mAP_75=ap - 0.1, mAP_s=ap, mAP_m=-1.0)
            out.update({f'coco/{task}_{k}': v for k, v in {**suffixes, 'mAP_l': ap / 2}.items()})
    return out


@pytest.fixture(scope='session')
def coco():
    """``coco(bbox, segm=None)``: CocoMetric-like results (fractions) with that
    AP; AP50 = AP + 0.1, AP75 = AP - 0.1, APs = AP, APm absent (-1), APl = AP / 2."""
    return _coco


@pytest.fixture(scope='session')
def configs() -> tuple[Config, Config]:
    """A small GC config and its baseline: they differ only in the optimizer."""
    base = dict(
        model=dict(backbone=dict(depth=50)),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.02)),
        train_dataloader=dict(batch_size=2),
        randomness=dict(seed=0),
    )
    gc = Config(base)
    gc.merge_from_dict({'optim_wrapper.optimizer.type': 'SGDGC'})
    return gc, Config(base)


@pytest.fixture(scope='session')
def runs(configs):
    """``runs(side, {seed: ap}, **options)``: a run per seed named ``<side><seed>``,
    bbox AP ``ap``, segm AP ``ap - 0.05``, the ``side`` ('gc' or 'base') config
    with that seed and ``options`` (dotted keys), config name ``<side>_cfg``."""

    def make(side: str, aps: dict, **options) -> list[RunResult]:
        out = []
        for seed, ap in aps.items():
            cfg = Config(configs[side != 'gc'].to_dict())
            cfg.merge_from_dict({'randomness.seed': seed, **options})
            out.append(RunResult(f'{side}{seed}', _coco(ap, ap - 0.05), cfg, f'{side}_cfg'))
        return out

    return make


@pytest.fixture(scope='session')
def row():
    """``row(comparison, task='bbox', metric='AP')``: that row."""
    return lambda c, task='bbox', metric='AP': next(
        r for r in c.rows if (r.task, r.metric) == (task, metric)
    )


@pytest.fixture(scope='module')
def tiny(tools) -> tuple[Config, Config]:
    """The tiny Mask R-CNN twins of the tool tests (GC, baseline)."""
    names = ('mask_rcnn_tiny_gc.py', 'mask_rcnn_tiny.py')
    return tuple(Config.fromfile(str(tools.configs / name)) for name in names)


@pytest.fixture(scope='session')
def metafile(tools) -> str:
    return str(tools.root / 'configs' / 'metafile.yml')
