"""Train a detector: MMDetection's ``tools/train.py`` with mmgc loaded.

Usage::

    python tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]] [--amp]
        [--auto-scale-lr] [--gc-diagnostics INTERVAL] [--cfg-options KEY=VALUE ...]
        [--launcher {none,pytorch,slurm,mpi}] [--dist-timeout SECONDS]

See docs/tools.md; the logic lives in ``mmgc.runtime.cli``.
"""

from __future__ import annotations

import sys

from mmdet.utils import register_all_modules, setup_cache_size_limit_of_dynamo
from torch.distributed.elastic.multiprocessing.errors import record

import mmgc  # noqa: F401  (the GC core: SGDGC, its constructor, GCDiagnosticsHook)
from mmgc.runtime.cli import exit_on_user_error, parse_args, run_train, train_parser


# @record: under torchrun, the error that ends a rank is shown in torchrun's
# summary ("Root Cause"); without torchrun it only re-raises.
@exit_on_user_error
@record
def main(argv: list[str] | None = None) -> None:
    args = parse_args(train_parser(), argv)
    # Reduce the number of repeated compilations and improve training speed.
    setup_cache_size_limit_of_dynamo()
    register_all_modules(init_default_scope=False)
    run_train(args)


if __name__ == '__main__':
    main(sys.argv[1:])
