"""The metrics file that ``tools/test.py`` writes and ``tools/compare_ap.py`` reads
(with :func:`mmgc.runtime.logs.read_metrics`).

MMEngine's ``LoggerHook`` dumps test metrics only to a timestamped file. The
comparison needs a fixed path, ``<work_dir>/test_metrics.json``, and the config
and seed that the checkpoint was *trained* with (``meta['cfg']``, ``meta['seed']``).
"""

from __future__ import annotations

import math
import numbers
import os.path as osp
from typing import Any, Optional

import mmengine
from mmengine.dist import master_only
from mmengine.hooks import Hook
from mmengine.logging import print_log

from .atomic_checkpoint import atomic_write_bytes
from .logs import METRICS_FILENAME

__all__ = ['METRICS_FILENAME', 'TEST_CONFIG_SUFFIX', 'TestMetricsHook', 'write_metrics_file']

#: ``tools/test.py`` dumps its config as ``<config stem>_test.py``, beside the training one.
TEST_CONFIG_SUFFIX = '_test.py'


def write_metrics_file(
    path: str,
    metrics: dict,
    *,
    config: str,
    checkpoint: str,
    config_text: str,
    train_config_text: Optional[str] = None,
    seed: Optional[int] = None,
) -> str:
    """Write ``path`` atomically: the numbers of ``metrics`` (non-finite ones as
    ``null``), the test's config, checkpoint and config text, and what the
    checkpoint recorded of its training (``null`` if nothing).

    Returns:
        str: ``path``.
    """
    kept = {str(k): float(v) for k, v in metrics.items() if isinstance(v, numbers.Real)}
    record = dict(format='mmgc-test-metrics/2', config=config, checkpoint=checkpoint)
    record['metrics'] = {k: v if math.isfinite(v) else None for k, v in kept.items()}
    record.update(config_text=config_text, train_config_text=train_config_text, seed=seed)
    atomic_write_bytes(mmengine.dump(record, file_format='json', indent=2), path)
    return path


class TestMetricsHook(Hook):
    """Write ``<work_dir>/test_metrics.json`` after a test (rank 0).

    Args:
        config (str): The config file the test was given.
        checkpoint (str): The checkpoint it tests.
    """

    priority = 'VERY_LOW'

    def __init__(self, config: str, checkpoint: str) -> None:
        self.config, self.checkpoint, self.meta = config, checkpoint, {}

    def after_load_checkpoint(self, runner: Any, checkpoint: dict) -> None:
        self.meta = checkpoint.get('meta') or {}

    @master_only
    def after_test_epoch(self, runner: Any, metrics: Optional[dict] = None) -> None:
        path = osp.join(runner.work_dir, METRICS_FILENAME)
        train = dict(train_config_text=self.meta.get('cfg'), seed=self.meta.get('seed'))
        kw = dict(config=self.config, checkpoint=self.checkpoint, **train)
        write_metrics_file(path, metrics or {}, config_text=runner.cfg.pretty_text, **kw)
        print_log(f'Metrics written to {path}', logger='current')
