"""Stop a run before the model is built when its data is not on disk (MMEngine builds
datasets after the model): :func:`check_data_paths` names the first missing path and
its config key.
"""

from __future__ import annotations

import os.path as osp
import re
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

__all__ = ['DataPath', 'MissingDataError', 'check_data_paths', 'data_paths']

#: The dataloaders and evaluators each kind of run reads.
_READS = {
    'train': ('train_dataloader', 'val_dataloader', 'val_evaluator'),
    'test': ('test_dataloader', 'test_evaluator'),
}


class MissingDataError(FileNotFoundError):
    """A path a run's datasets or evaluators need does not exist."""


class DataPath(NamedTuple):
    """A path a run reads: config key, kind (``'data root'``, ``'annotation file'``,
    ``'<name> folder'``), path as opened (``data_root`` joined as ``BaseDataset`` does)."""

    where: str
    kind: str
    path: str


def _items(value: Any, where: str) -> Iterator[tuple[Mapping, str]]:
    """``value`` if it is a config dict, or the dicts of a list of them."""
    if isinstance(value, Mapping):
        yield value, where
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _items(item, f'{where}[{i}]')


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ''


def _paths(cfg: Mapping, where: str) -> Iterator[DataPath]:
    """Paths of a dataset or evaluator config and of those it wraps."""
    for key in ('dataset', 'datasets', 'metrics'):  # dataset wrappers, ``Evaluator``
        for inner, at in _items(cfg.get(key), f'{where}.{key}'):
            yield from _paths(inner, at)
    root, ann_file = _str(cfg.get('data_root')), _str(cfg.get('ann_file'))
    if root:
        yield DataPath(f'{where}.data_root', 'data root', root)
    if ann_file:
        yield DataPath(f'{where}.ann_file', 'annotation file', osp.join(root, ann_file))
    prefixes = cfg.get('data_prefix')
    for name, prefix in prefixes.items() if isinstance(prefixes, Mapping) else ():
        if _str(prefix):
            kind = 'image folder' if name == 'img' else f'{name} folder'
            yield DataPath(f'{where}.data_prefix.{name}', kind, osp.join(root, prefix))


def data_paths(cfg: Mapping[str, Any], run: str) -> list[DataPath]:
    """Local paths (in config order) that a ``run`` (``'train'``/``'test'``) of ``cfg`` reads.

    Raises:
        ValueError: If ``run`` is not ``'train'`` or ``'test'``.
    """
    if run not in _READS:
        raise ValueError(f'run must be one of {tuple(_READS)}; got {run!r}')
    found: list[DataPath] = []
    for key in _READS[run]:
        value = cfg.get(key)
        if key.endswith('dataloader'):  # its dataset (an evaluator: it, or a list of them)
            value, key = (value or {}).get('dataset'), f'{key}.dataset'
        for item, where in _items(value, key):
            found.extend(_paths(item, where))
    return [p for p in found if '://' not in p.path and not p.path.startswith('s3:')]


def check_data_paths(cfg: Mapping[str, Any], run: str) -> None:
    """Raise if a path that a ``run`` of ``cfg`` reads does not exist (data roots
    and folders must be directories, annotation files files).

    Raises:
        MissingDataError: Naming the first missing path, its kind and config key.
    """
    for p in data_paths(cfg, run):
        if not (osp.isfile if p.kind == 'annotation file' else osp.isdir)(p.path):
            key = p.where  # a dataset's missing file: point its data_root elsewhere
            if 'dataloader' in key:
                key = re.sub(r'\.(ann_file|data_prefix\.\w+)$', '.data_root', key)
            raise MissingDataError(
                f"The {p.kind} '{p.path}' ({p.where}) does not exist: make the data first, or "
                f'point the config at it (e.g. --cfg-options {key}=...).'
            )
