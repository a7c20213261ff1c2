"""The metric file that ``tools/test.py`` writes and the comparison reads.

``<work_dir>/test_metrics.json``::

    {
      "format": "mmgc-test-metrics/2",
      "config": "configs/mask_rcnn_r50_fpn_gc.py",   # as given to test.py
      "checkpoint": "work_dirs/.../epoch_12.pth",
      "metrics": {"coco/bbox_mAP": 0.374, ...},      # runner.test()'s dict
      "config_text": "...",                          # the test-time merged config
      "train_config_text": "...",                    # the training config
      "seed": 0                                      # the training seed
    }

``train_config_text`` and ``seed`` are what the tested checkpoint recorded
(MMEngine's ``meta['cfg']`` and ``meta['seed']``, read by
:class:`TrainingRecordHook` as the checkpoint loads); ``null`` when it
recorded none. So a metric file alone is enough for ``tools/compare_ap.py``
to check that runs differ only in the optimizer and the seed, with the
options they were trained with, and to pair them by seed. Files of format
``/1`` have no such keys.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import os.path as osp
from collections.abc import Mapping
from typing import Any, Optional

from mmengine.hooks import Hook

__all__ = [
    'METRICS_FILENAME',
    'TEST_CONFIG_SUFFIX',
    'TrainingRecordHook',
    'jsonable_metrics',
    'read_metrics_file',
    'write_metrics_file',
]

#: File name of the metrics in a test run's work dir.
METRICS_FILENAME = 'test_metrics.json'
#: ``tools/test.py`` dumps its test-time config into the work dir as
#: ``<config stem>_test.py``, beside (not over) the training run's
#: ``<config stem>.py``.
TEST_CONFIG_SUFFIX = '_test.py'

_FORMAT = 'mmgc-test-metrics/2'


class TrainingRecordHook(Hook):
    """Keeps the training config and seed that a loaded checkpoint recorded.

    MMEngine's ``Runner.save_checkpoint`` stores the training run's merged
    config (``meta['cfg']``, ``Config.pretty_text``) and its seed
    (``meta['seed']``) in every checkpoint; the test runner loads the
    checkpoint and calls ``after_load_checkpoint`` with it.

    Attributes:
        config_text (str | None): The training config, if recorded.
        seed (int | None): The training seed, if recorded.
    """

    priority = 'VERY_LOW'

    def __init__(self) -> None:
        self.config_text: Optional[str] = None
        self.seed: Optional[int] = None

    def after_load_checkpoint(self, runner: Any, checkpoint: dict) -> None:
        meta = checkpoint.get('meta') if isinstance(checkpoint, Mapping) else None
        meta = meta if isinstance(meta, Mapping) else {}
        text, seed = meta.get('cfg'), meta.get('seed')
        self.config_text = text if isinstance(text, str) and text.strip() else None
        self.seed = seed if isinstance(seed, int) and not isinstance(seed, bool) else None


def jsonable_metrics(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Keep numbers (as floats, non-finite as None) and strings."""
    out: dict[str, Any] = {}
    for key, value in metrics.items():
        if isinstance(value, bool):
            out[str(key)] = value
        elif isinstance(value, numbers.Real):
            value = float(value)
            out[str(key)] = value if math.isfinite(value) else None
        elif isinstance(value, str):
            out[str(key)] = value
    return out


def write_metrics_file(
    path: str,
    metrics: Mapping[str, Any],
    *,
    config: str,
    checkpoint: str,
    config_text: str,
    train_config_text: Optional[str] = None,
    seed: Optional[int] = None,
) -> str:
    """Write a test run's metrics (see the module docstring).

    Args:
        path (str): The JSON file to write; its folder is created.
        metrics (Mapping): What ``Runner.test()`` returned.
        config (str): The config file the run was given.
        checkpoint (str): The checkpoint it tested.
        config_text (str): The test-time merged config (``Config.pretty_text``).
        train_config_text (str, optional): The config the checkpoint was
            trained with.
        seed (int, optional): The seed it was trained with.

    Returns:
        str: ``path``.
    """
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    record = {
        'format': _FORMAT,
        'config': config,
        'checkpoint': checkpoint,
        'metrics': jsonable_metrics(metrics),
        'config_text': config_text,
        'train_config_text': train_config_text,
        'seed': seed,
    }
    tmp = f'{path}.tmp'
    with open(tmp, 'w', encoding='utf-8') as f:
        json.dump(record, f, indent=2)
        f.write('\n')
    os.replace(tmp, path)
    return path


def read_metrics_file(path: str) -> dict[str, Any]:
    """Read a file written by :func:`write_metrics_file`.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If it is not such a file.
    """
    if not osp.isfile(path):
        raise FileNotFoundError(f"Metrics file '{path}' does not exist.")
    try:
        with open(path, encoding='utf-8') as f:
            record = json.load(f)
    except json.JSONDecodeError as err:
        raise ValueError(f"Metrics file '{path}' is not valid JSON: {err}") from None
    if not isinstance(record, dict) or not isinstance(record.get('metrics'), dict):
        raise ValueError(
            f"Metrics file '{path}' has no 'metrics' object; expected a file "
            f'written by tools/test.py ({METRICS_FILENAME}).'
        )
    return record
