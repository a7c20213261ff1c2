"""The metric file that ``tools/test.py`` writes and the comparison reads.

``<work_dir>/test_metrics.json``::

    {
      "format": "mmgc-test-metrics/1",
      "config": "configs/mask_rcnn_r50_fpn_gc.py",   # as given to test.py
      "checkpoint": "work_dirs/.../epoch_12.pth",
      "metrics": {"coco/bbox_mAP": 0.374, ...},      # runner.test()'s dict
      "config_text": "..."                           # the merged config
    }

``config_text`` is the run's merged config (``Config.pretty_text``), so a
metric file alone is enough for ``tools/compare_ap.py`` to check that two
runs differ only in the optimizer.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import os.path as osp
from collections.abc import Mapping
from typing import Any

__all__ = [
    'METRICS_FILENAME',
    'jsonable_metrics',
    'read_metrics_file',
    'write_metrics_file',
]

#: File name of the metrics in a test run's work dir.
METRICS_FILENAME = 'test_metrics.json'

_FORMAT = 'mmgc-test-metrics/1'


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
) -> str:
    """Write a test run's metrics (see the module docstring).

    Args:
        path (str): The JSON file to write; its folder is created.
        metrics (Mapping): What ``Runner.test()`` returned.
        config (str): The config file the run was given.
        checkpoint (str): The checkpoint it tested.
        config_text (str): The merged config (``Config.pretty_text``).

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
