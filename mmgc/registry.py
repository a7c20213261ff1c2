"""The ``mmgc`` registry scope: MMDetection's registries, seen from mmgc's configs.

A config that inherits ``'mmgc::...'`` gets, from MMEngine's loader,
``_scope_='mmgc'`` on each of that base's top-level dicts with a ``type`` and no
scope yet (in the demo's configs: ``train_cfg``, ``param_scheduler``, the
pipelines). Building one switches to the scope ``mmgc``: MMEngine imports
``mmgc.registry`` and looks for registries of that scope. Each registry here
is a child of MMDetection's registry of the same kind and holds nothing of
its own, so a type is looked up in MMDetection's registry, then in MMEngine's
root (where ``import mmgc`` registers SGDGC, its constructor and hook): the
lookup of the ``mmdet`` scope, which is what mmgc's configs are written for.

Not imported by ``import mmgc``; MMEngine imports it when the scope is used.
"""

from mmdet import registry as mmdet
from mmengine.registry import Registry

from ._compat import registry_locations
from .mim import CONFIG_SCOPE

__all__ = [
    'DATASETS',
    'DATA_SAMPLERS',
    'EVALUATOR',
    'HOOKS',
    'LOG_PROCESSORS',
    'LOOPS',
    'METRICS',
    'MODELS',
    'MODEL_WRAPPERS',
    'OPTIMIZERS',
    'OPTIM_WRAPPERS',
    'OPTIM_WRAPPER_CONSTRUCTORS',
    'PARAM_SCHEDULERS',
    'RUNNERS',
    'RUNNER_CONSTRUCTORS',
    'TASK_UTILS',
    'TRANSFORMS',
    'VISBACKENDS',
    'VISUALIZERS',
    'WEIGHT_INITIALIZERS',
]


def _child(parent: Registry) -> Registry:
    # locations: what a lookup imports first. A parent's modules are searched
    # but not imported by a child's lookup, so MMDetection's go here too.
    locations = ['mmgc', *registry_locations(parent)]
    return Registry(parent.name, parent=parent, scope=CONFIG_SCOPE, locations=locations)


RUNNERS = _child(mmdet.RUNNERS)
RUNNER_CONSTRUCTORS = _child(mmdet.RUNNER_CONSTRUCTORS)
LOOPS = _child(mmdet.LOOPS)
HOOKS = _child(mmdet.HOOKS)
DATASETS = _child(mmdet.DATASETS)
DATA_SAMPLERS = _child(mmdet.DATA_SAMPLERS)
TRANSFORMS = _child(mmdet.TRANSFORMS)
MODELS = _child(mmdet.MODELS)
MODEL_WRAPPERS = _child(mmdet.MODEL_WRAPPERS)
WEIGHT_INITIALIZERS = _child(mmdet.WEIGHT_INITIALIZERS)
OPTIMIZERS = _child(mmdet.OPTIMIZERS)
OPTIM_WRAPPERS = _child(mmdet.OPTIM_WRAPPERS)
OPTIM_WRAPPER_CONSTRUCTORS = _child(mmdet.OPTIM_WRAPPER_CONSTRUCTORS)
PARAM_SCHEDULERS = _child(mmdet.PARAM_SCHEDULERS)
METRICS = _child(mmdet.METRICS)
EVALUATOR = _child(mmdet.EVALUATOR)
TASK_UTILS = _child(mmdet.TASK_UTILS)
VISUALIZERS = _child(mmdet.VISUALIZERS)
VISBACKENDS = _child(mmdet.VISBACKENDS)
LOG_PROCESSORS = _child(mmdet.LOG_PROCESSORS)
