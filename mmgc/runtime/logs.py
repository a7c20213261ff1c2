"""The one reader of a run's logs and metrics.

MMEngine's ``LocalVisBackend`` appends one JSON record a line to
``<work_dir>/<timestamp>/vis_data/scalars.json``; a resumed run starts a new
``<timestamp>`` folder. ``LoggerHook`` writes a record after every logged
training iteration (its keys: ``lr``, ``loss``..., ``time``, ``data_time``,
``iter`` and ``step``, both the iteration) and one after each validation (the
metrics, e.g. ``coco/bbox_mAP``, ``time``, ``data_time`` and ``step``, no
``iter``); hooks such as ``GCDiagnosticsHook`` add their own records with
``step`` the iteration. ``tools/test.py`` writes ``test_metrics.json``
(:mod:`mmgc.runtime.metrics`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Union

#: The file ``tools/test.py`` writes into its work dir.
METRICS_FILENAME = 'test_metrics.json'
#: What a validation record's metric keys start with (CocoMetric's prefix).
VAL_PREFIX = 'coco/'
#: The other codebases' validation metrics: MMSegmentation's IoUMetric (no prefix)
#: and MMPretrain's Accuracy (``accuracy/top1``, ...).
VAL_KEYS = ('mIoU', 'mAcc', 'aAcc')
VAL_OTHER_PREFIX = 'accuracy/'

PathLike = Union[str, Path]
__all__ = [
    'METRICS_FILENAME',
    'last_val_metrics',
    'read_metrics',
    'read_scalars',
    'scalar_files',
    'train_series',
]


def scalar_files(work_dir: PathLike) -> list[Path]:
    """The ``<work_dir>/<timestamp>/vis_data/scalars.json`` files, oldest run
    first; ``[work_dir]`` if it is itself a scalars file.

    Raises:
        FileNotFoundError: If there is none, naming ``work_dir``.
    """
    path = Path(work_dir)
    if path.is_file():
        return [path]
    files = sorted(path.glob('*/vis_data/scalars.json'), key=lambda p: p.parent.parent.name)
    if not files:
        raise FileNotFoundError(
            f"no vis_data/scalars.json under {path} (MMEngine's LocalVisBackend writes "
            '<work_dir>/<timestamp>/vis_data/scalars.json)'
        )
    return files


def _records(file: Path) -> list[dict[str, Any]]:
    lines = [line for line in file.read_text(encoding='utf-8').splitlines() if line.strip()]
    records = []
    for number, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            if number < len(lines):  # only the last line may be one being written
                raise ValueError(f"'{file}' line {number} is not a JSON record: {err}") from None
    return records


def read_scalars(path: PathLike) -> list[dict[str, Any]]:
    """Every complete record of :func:`scalar_files` ``(path)``, in order (a
    half-written last line of a file is skipped).

    Raises:
        FileNotFoundError: If there is no scalars file.
        ValueError: If a line other than a file's last is not JSON.
    """
    return [record for file in scalar_files(path) for record in _records(file)]


def train_series(path: PathLike, key: str) -> list[tuple[int, float]]:
    """``(iteration, value)`` of the training records holding ``key`` (such as
    ``'loss'``, ``'time'`` or ``'gc/conv/grad_norm'``), sorted by iteration;
    an iteration logged again (by a resumed run) takes the later file's value.

    Raises:
        FileNotFoundError: If there is no scalars file.
    """
    series: dict[int, float] = {}
    for record in read_scalars(path):
        # LoggerHook's training record (it has ``iter``) or a hook's (no ``time``:
        # a validation record has it, from IterTimerHook)
        train = 'iter' in record or not ('time' in record or 'data_time' in record)
        if key in record and train:
            series[int(record.get('iter', record.get('step', 0)))] = float(record[key])
    return sorted(series.items())


def last_val_metrics(path: PathLike) -> tuple[Path, dict[str, Any]]:
    """The metrics of the last validation record (``coco/...``, or :data:`VAL_KEYS`
    and ``accuracy/...``), and the scalars file holding it.

    Raises:
        FileNotFoundError: If there is no scalars file or no validation record.
    """
    found = [
        (file, metrics)
        for file in scalar_files(path)
        for record in _records(file)
        if (metrics := {k: v for k, v in record.items() if _is_val_metric(str(k))})
    ]
    if not found:
        raise FileNotFoundError(
            f"no validation metrics ('{VAL_PREFIX}...') in scalars of {path}, nor "
            f"MMSegmentation's ({', '.join(VAL_KEYS)}) or MMPretrain's ('{VAL_OTHER_PREFIX}...')"
        )
    return found[-1]


def _is_val_metric(key: str) -> bool:
    return key.startswith((VAL_PREFIX, VAL_OTHER_PREFIX)) or key in VAL_KEYS


def read_metrics(path: PathLike) -> dict[str, Any]:
    """Read a :data:`METRICS_FILENAME` that
    :func:`mmgc.runtime.metrics.write_metrics_file` wrote.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If it is not JSON with a ``metrics`` object.
    """
    with open(path, encoding='utf-8') as f:
        try:
            record = json.load(f)
        except json.JSONDecodeError as err:
            raise ValueError(f"Metrics file '{path}' is not valid JSON: {err}") from None
    if not isinstance(record, dict) or not isinstance(record.get('metrics'), dict):
        raise ValueError(
            f"Metrics file '{path}' has no 'metrics' object; expected {METRICS_FILENAME} "
            'written by tools/test.py.'
        )
    return record
