"""The ``mmgc`` registry scope: the registries of the run's codebase, seen from mmgc's configs.

A config that inherits ``'mmgc::...'`` gets, from MMEngine's loader,
``_scope_='mmgc'`` on each of that base's top-level dicts with a ``type`` and no
scope yet (in the demo's configs: ``train_cfg``, ``param_scheduler``, the
pipelines). Building one switches to the scope ``mmgc``: MMEngine imports
``mmgc.registry`` and looks for registries of that scope. Each registry here
is a :class:`CodebaseRegistry`, a child of MMEngine's root registry of its
kind that holds nothing of its own: it looks a type up in the registry of the
same kind of the *run's codebase*, the scope the run was in before the build
switched to ``mmgc`` (the config's ``default_scope``, which the ``Runner``
sets): MMDetection's, MMSegmentation's or MMPretrain's (:data:`CODEBASE_SCOPES`),
then MMEngine's root (where ``import mmgc`` registers SGDGC, its constructor
and hook). So ``LoadAnnotations`` in an mmgc config for MMSegmentation is
MMSegmentation's, never MMDetection's class of the same name. Without such a
scope (a config whose ``default_scope`` is ``mmgc`` or none), MMDetection's,
as before the other codebases were supported.

Not imported by ``import mmgc``; MMEngine imports it when the scope is used.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any, Optional

from mmengine import registry as root
from mmengine.registry import Registry

from ._compat import default_scope_names
from .mim import CONFIG_SCOPE

__all__ = [
    'CODEBASE_SCOPES',
    'DATASETS',
    'DATA_SAMPLERS',
    'EVALUATOR',
    'FALLBACK_SCOPE',
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
    'CodebaseRegistry',
    'run_codebase_scope',
]

#: The codebases whose registries the ``mmgc`` scope resolves into.
CODEBASE_SCOPES = ('mmdet', 'mmseg', 'mmpretrain')
#: The codebase of a run in no codebase's scope (MMDetection: mmgc's first codebase).
FALLBACK_SCOPE = 'mmdet'
#: Other names of a registry in a codebase's ``registry`` module (MMPretrain: EVALUATORS).
_ALIASES = {'EVALUATOR': ('EVALUATOR', 'EVALUATORS')}


def run_codebase_scope() -> Optional[str]:
    """The codebase scope a build in the ``mmgc`` scope resolves into: the latest
    of :data:`CODEBASE_SCOPES` among MMEngine's default scopes (the run's, and
    those that enclosing builds switched to), else :data:`FALLBACK_SCOPE` if it
    is installed, else None (MMEngine's root registries only)."""
    for name in reversed(default_scope_names()):
        if name in CODEBASE_SCOPES:
            return name
    return FALLBACK_SCOPE if importlib.util.find_spec(FALLBACK_SCOPE) is not None else None


class CodebaseRegistry(Registry):
    """A registry of the ``mmgc`` scope, for the registries named ``attr`` in
    the codebases' ``registry`` modules: a lookup goes to the registry of the
    run's codebase (:func:`run_codebase_scope`), else to ``parent`` (MMEngine's root).

    Args:
        parent (Registry): MMEngine's root registry of this kind.
        attr (str): The name of this kind's registry in ``<codebase>.registry``.
    """

    def __init__(self, parent: Registry, attr: str) -> None:
        super().__init__(parent.name, parent=parent, scope=CONFIG_SCOPE, locations=['mmgc'])
        self.attr = attr

    def codebase_registry(self) -> Optional[Registry]:
        """The registry of this kind of the run's codebase; None if there is none."""
        scope = run_codebase_scope()
        if scope is None:
            return None
        module = importlib.import_module(f'{scope}.registry')  # the codebase's registry tree
        found = (getattr(module, a, None) for a in _ALIASES.get(self.attr, (self.attr,)))
        return next((r for r in found if isinstance(r, Registry)), None)

    def get(self, key: str) -> Any:
        """The class (or function) ``key`` names, looked up in the run's codebase's
        registry (then MMEngine's root); None if it is in neither."""
        self.import_from_location()  # mmgc's own modules
        registry = self.codebase_registry()
        return super().get(key) if registry is None else registry.get(key)


def _scoped(attr: str) -> CodebaseRegistry:
    return CodebaseRegistry(getattr(root, attr), attr)


RUNNERS = _scoped('RUNNERS')
RUNNER_CONSTRUCTORS = _scoped('RUNNER_CONSTRUCTORS')
LOOPS = _scoped('LOOPS')
HOOKS = _scoped('HOOKS')
DATASETS = _scoped('DATASETS')
DATA_SAMPLERS = _scoped('DATA_SAMPLERS')
TRANSFORMS = _scoped('TRANSFORMS')
MODELS = _scoped('MODELS')
MODEL_WRAPPERS = _scoped('MODEL_WRAPPERS')
WEIGHT_INITIALIZERS = _scoped('WEIGHT_INITIALIZERS')
OPTIMIZERS = _scoped('OPTIMIZERS')
OPTIM_WRAPPERS = _scoped('OPTIM_WRAPPERS')
OPTIM_WRAPPER_CONSTRUCTORS = _scoped('OPTIM_WRAPPER_CONSTRUCTORS')
PARAM_SCHEDULERS = _scoped('PARAM_SCHEDULERS')
METRICS = _scoped('METRICS')
EVALUATOR = _scoped('EVALUATOR')
TASK_UTILS = _scoped('TASK_UTILS')
VISUALIZERS = _scoped('VISUALIZERS')
VISBACKENDS = _scoped('VISBACKENDS')
LOG_PROCESSORS = _scoped('LOG_PROCESSORS')
