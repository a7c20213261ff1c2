"""Test (and evaluate) a detector: MMDetection's ``tools/test.py`` with mmgc.

Usage::

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out FILE.pkl]
        [--show] [--show-dir DIR] [--cfg-options KEY=VALUE ...]
        [--launcher {none,pytorch,slurm,mpi}] [--dist-timeout SECONDS]

Writes the metrics to ``<work_dir>/test_metrics.json`` for
``tools/compare_ap.py``. See docs/tools.md; the logic lives in
``mmgc.runtime.cli``.
"""

from __future__ import annotations

import sys

from mmdet.utils import register_all_modules, setup_cache_size_limit_of_dynamo
from torch.distributed.elastic.multiprocessing.errors import record

import mmgc  # noqa: F401  (the GC core: SGDGC, its constructor, GCDiagnosticsHook)
from mmgc.runtime.cli import exit_on_user_error, parse_args, run_test, test_parser


# @record: under torchrun, the error that ends a rank is shown in torchrun's
# summary ("Root Cause"); without torchrun it only re-raises.
@exit_on_user_error
@record
def main(argv: list[str] | None = None) -> None:
    args = parse_args(test_parser(), argv)
    # Reduce the number of repeated compilations and improve speed.
    setup_cache_size_limit_of_dynamo()
    register_all_modules(init_default_scope=False)
    run_test(args)


if __name__ == '__main__':
    main(sys.argv[1:])
