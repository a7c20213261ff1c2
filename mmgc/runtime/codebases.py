"""The codebases the tools run, found from a config's ``default_scope``:
MMDetection, MMSegmentation and MMPretrain (docs/codebases.md). Only the
codebase of the config at hand is imported; a missing one ends in one
sentence that names what to install (:class:`MissingCodebaseError`).
"""

from __future__ import annotations

import importlib
import importlib.util
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mmengine.config import Config

from ..registry import FALLBACK_SCOPE
from ..version import SUPPORTED_VERSIONS, check_version
from .errors import ConfigError

__all__ = [
    'CODEBASES',
    'Codebase',
    'MissingCodebaseError',
    'codebase_of',
    'dump_results_metric',
    'prepare_codebase',
    'read_config',
    'runner_registry',
    'trigger_visualization_hook',
]


@dataclass(frozen=True)
class Codebase:
    """An OpenMMLab codebase: its registry scope (= import name), name, what to
    install, what its configs do (``'detection'``, ...) and its distribution."""

    scope: str
    name: str
    install: str
    task: str
    distribution: str


#: The codebases, by their ``default_scope``.
CODEBASES: dict[str, Codebase] = {
    c.scope: c
    for c in (
        Codebase('mmdet', 'MMDetection', "pip install 'mmdet>=3.3,<3.4'", 'detection', 'mmdet'),
        Codebase(
            'mmseg',
            'MMSegmentation',
            "pip install 'mmsegmentation>=1.2.2,<1.3' ftfy regex",
            'segmentation',
            'mmsegmentation',
        ),
        Codebase(
            'mmpretrain',
            'MMPretrain',
            "pip install 'mmpretrain>=1.2,<1.3' and the torchvision built for your torch",
            'classification',
            'mmpretrain',
        ),
    )
}


class MissingCodebaseError(ConfigError):
    """The config's codebase is not installed, or cannot be imported (a user's error)."""


#: MMEngine's error for a ``<scope>::`` base whose package is not installed
#: (``Config._get_cfg_path``).
_BASE_NOT_INSTALLED = re.compile(r'(?P<distribution>[\w.-]+) is not installed, please install')


def read_config(path: str) -> Config:
    """``Config.fromfile(path)``.

    Raises:
        MissingCodebaseError: If it inherits a base of a codebase that is not installed
            (``'mmseg::...'`` without MMSegmentation), naming what to install.
    """
    try:
        return Config.fromfile(path)
    except ModuleNotFoundError as err:
        found = _BASE_NOT_INSTALLED.match(str(err))
        by_dist = {c.distribution: c for c in CODEBASES.values()}
        codebase = by_dist.get(found['distribution']) if found else None
        if codebase is None:
            raise
        raise MissingCodebaseError(
            f"'{path}' inherits {codebase.name}'s configs ({codebase.scope}::...), and "
            f'{codebase.name} is not installed: {codebase.install}.'
        ) from None


def codebase_of(cfg: Mapping[str, Any]) -> Codebase:
    """The codebase of ``cfg``, by its ``default_scope``: MMDetection's for
    none or ``'mmgc'`` (what mmgc's tools ran before there were others).

    Raises:
        ConfigError: For another ``default_scope``, naming the valid ones.
    """
    scope = cfg.get('default_scope') or FALLBACK_SCOPE
    scope = FALLBACK_SCOPE if scope == 'mmgc' else scope
    if scope not in CODEBASES:
        raise ConfigError(
            f"default_scope {scope!r} is not a codebase mmgc's tools run; valid: "
            f'{", ".join(CODEBASES)} (or mmgc, or none: MMDetection).'
        )
    return CODEBASES[scope]


def prepare_codebase(codebase: Codebase) -> None:
    """Import ``codebase`` and register its modules (its
    ``utils.register_all_modules(init_default_scope=False)``), as its own
    ``tools/train.py`` has them; for MMDetection also its dynamo cache limit.

    Raises:
        MissingCodebaseError: If it is not installed or fails to import (such as
            MMPretrain without a torchvision that loads beside this torch).
        UnsupportedVersionError: If its version is outside the tested range
            (:data:`mmgc.version.SUPPORTED_VERSIONS`).
    """
    if importlib.util.find_spec(codebase.scope) is None:
        raise MissingCodebaseError(
            f'This config is for {codebase.name} (default_scope {codebase.scope!r}), '
            f'which is not installed: {codebase.install}.'
        )
    try:
        utils = importlib.import_module(f'{codebase.scope}.utils')
        utils.register_all_modules(init_default_scope=False)
    except (ImportError, RuntimeError) as err:  # RuntimeError: a torchvision of another torch
        why = ' '.join(str(err).split())
        raise MissingCodebaseError(
            f'{codebase.name} is installed but cannot be imported ({type(err).__name__}: '
            f'{why}): {codebase.install}.'
        ) from None
    module = importlib.import_module(codebase.scope)
    if codebase.scope in SUPPORTED_VERSIONS:
        check_version(codebase.scope, module.__version__)
    if codebase.scope == 'mmdet':
        utils.setup_cache_size_limit_of_dynamo()  # fewer repeated compilations


def runner_registry(codebase: Codebase) -> Any:
    """``codebase``'s ``RUNNERS`` registry (for a config's ``runner_type``)."""
    return importlib.import_module(f'{codebase.scope}.registry').RUNNERS


def dump_results_metric(codebase: Codebase, out: str) -> Any:
    """The metric ``--out`` adds: MMDetection's ``DumpDetResults`` (masks
    encoded as COCO RLE), else MMEngine's ``DumpResults``; both pickle
    the predictions to ``out``."""
    if codebase.scope == 'mmdet':
        from mmdet.evaluation import DumpDetResults

        return DumpDetResults(out_file_path=out)
    from mmengine.evaluator import DumpResults

    return DumpResults(out_file_path=out)


def trigger_visualization_hook(codebase: Codebase, cfg: Any, args: Any) -> None:
    """``--show`` / ``--show-dir``: turn on ``cfg``'s visualization hook as
    ``codebase``'s ``tools/test.py`` does (the caller checked it has one)."""
    if codebase.scope == 'mmdet':
        from mmdet.engine.hooks.utils import trigger_visualization_hook as trigger

        trigger(cfg, args)
        return
    hook = cfg.default_hooks.visualization
    if codebase.scope == 'mmseg':  # MMSegmentation 1.2's tools/test.py
        hook.update(draw=True, **(dict(show=True, wait_time=args.wait_time) if args.show else {}))
        if args.show_dir:
            cfg.visualizer['save_dir'] = args.show_dir
    else:  # MMPretrain 1.2's tools/test.py
        hook.update(enable=True, show=args.show, wait_time=args.wait_time, out_dir=args.show_dir)
