"""Stop a run before the model is built when its data is not on disk.

MMEngine builds datasets lazily, after the model (and, for training, after
the first hooks), so a wrong ``data_root`` surfaces late and as a bare
``FileNotFoundError`` from deep inside a dataset. :func:`check_data_paths`
walks the dataset configs of the dataloaders a run will use and names the
first missing path and the config keys it came from.
"""

from __future__ import annotations

import os.path as osp
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, NamedTuple

__all__ = ['DataPath', 'MissingDataError', 'check_data_paths', 'data_paths']

#: Keys of a dataset config that hold nested dataset configs (MMEngine's and
#: MMDetection's dataset wrappers).
_WRAPPER_KEYS = ('dataset', 'datasets')

#: Dataloaders each kind of run uses.
RUN_DATALOADERS = {
    'train': ('train_dataloader', 'val_dataloader'),
    'test': ('test_dataloader',),
}

#: Evaluators each kind of run uses (their ``ann_file`` is read too).
RUN_EVALUATORS = {
    'train': ('val_evaluator',),
    'test': ('test_evaluator',),
}


class MissingDataError(FileNotFoundError):
    """A path a run's datasets or evaluators need does not exist."""


class DataPath(NamedTuple):
    """One path a run needs."""

    #: The config key it came from, e.g. ``train_dataloader.dataset.ann_file``.
    where: str
    #: ``'data root'``, ``'annotation file'``, ``'image folder'`` (or
    #: ``'<name> folder'`` for other ``data_prefix`` entries).
    kind: str
    #: The path as the dataset will open it (``data_root`` joined).
    path: str


def _is_remote(path: str) -> bool:
    return '://' in path or path.startswith(('s3:', 'http:', 'https:'))


def _join(data_root: str | None, path: str) -> str:
    """MMEngine's ``BaseDataset`` rule: relative paths hang off data_root."""
    if data_root and not osp.isabs(path):
        return osp.join(data_root, path)
    return path


def _dataset_paths(dataset: Mapping[str, Any], where: str) -> Iterator[DataPath]:
    """Paths of one dataset config and of the datasets it wraps."""
    for key in _WRAPPER_KEYS:
        inner = dataset.get(key)
        if isinstance(inner, Mapping):
            yield from _dataset_paths(inner, f'{where}.{key}')
        elif isinstance(inner, Sequence) and not isinstance(inner, str):
            for i, item in enumerate(inner):
                if isinstance(item, Mapping):
                    yield from _dataset_paths(item, f'{where}.{key}[{i}]')
    data_root = dataset.get('data_root')
    if isinstance(data_root, str) and data_root:
        yield DataPath(f'{where}.data_root', 'data root', data_root)
    ann_file = dataset.get('ann_file')
    if isinstance(ann_file, str) and ann_file:
        yield DataPath(f'{where}.ann_file', 'annotation file', _join(data_root, ann_file))
    prefixes = dataset.get('data_prefix')
    if isinstance(prefixes, Mapping):
        for name, prefix in prefixes.items():
            if isinstance(prefix, str) and prefix:
                kind = 'image folder' if name == 'img' else f'{name} folder'
                yield DataPath(f'{where}.data_prefix.{name}', kind, _join(data_root, prefix))


def _evaluator_paths(evaluator: Any, where: str) -> Iterator[DataPath]:
    if isinstance(evaluator, Sequence) and not isinstance(evaluator, str):
        for i, item in enumerate(evaluator):
            yield from _evaluator_paths(item, f'{where}[{i}]')
    elif isinstance(evaluator, Mapping):
        ann_file = evaluator.get('ann_file')
        if isinstance(ann_file, str) and ann_file:
            yield DataPath(f'{where}.ann_file', 'annotation file', ann_file)
        if 'metrics' in evaluator:  # an Evaluator wrapping several metrics
            yield from _evaluator_paths(evaluator['metrics'], f'{where}.metrics')


def data_paths(cfg: Mapping[str, Any], run: str) -> list[DataPath]:
    """Local paths that a ``run`` of ``cfg`` reads.

    Args:
        cfg (Mapping): A loaded MMEngine config.
        run (str): ``'train'`` (train and val dataloaders, val evaluator) or
            ``'test'`` (test dataloader and evaluator).

    Returns:
        list[DataPath]: In config order; remote paths (``s3://`` ...) are left
        out.

    Raises:
        ValueError: If ``run`` is not ``'train'`` or ``'test'``.
    """
    if run not in RUN_DATALOADERS:
        raise ValueError(f'run must be one of {tuple(RUN_DATALOADERS)}; got {run!r}')
    found: list[DataPath] = []
    for key in RUN_DATALOADERS[run]:
        loader = cfg.get(key)
        if isinstance(loader, Mapping) and isinstance(loader.get('dataset'), Mapping):
            found.extend(_dataset_paths(loader['dataset'], f'{key}.dataset'))
    for key in RUN_EVALUATORS[run]:
        if cfg.get(key) is not None:
            found.extend(_evaluator_paths(cfg[key], key))
    return [p for p in found if not _is_remote(p.path)]


def check_data_paths(cfg: Mapping[str, Any], run: str) -> None:
    """Raise if a path that a ``run`` of ``cfg`` reads does not exist.

    Data roots and folders must be directories, annotation files files.

    Args:
        cfg (Mapping): A loaded MMEngine config.
        run (str): ``'train'`` or ``'test'``.

    Raises:
        MissingDataError: Naming the first missing path, its kind and the
            config key it came from.
    """
    for item in data_paths(cfg, run):
        expected_dir = item.kind != 'annotation file'
        exists = osp.isdir(item.path) if expected_dir else osp.isfile(item.path)
        if not exists:
            key = item.where
            if 'dataloader' in key and not key.endswith('.data_root'):
                key = (
                    key.split('.data_prefix.')[0]
                    if '.data_prefix.' in key
                    else key.rsplit('.', 1)[0]
                )
                key += '.data_root'
            raise MissingDataError(
                f"The {item.kind} '{item.path}' ({item.where}) does not "
                'exist: make the data first, or point the config at it '
                f'(e.g. --cfg-options {key}=...).'
            )
