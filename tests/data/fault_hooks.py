"""Test helper: inject faults into a real training run (tests/runtime/:
test_resume.py, test_distributed.py, test_optimizer_state.py).

Imported by ``tests/data/configs/mask_rcnn_tiny_gc_fault*.py`` through
``custom_imports`` (the tests put this folder on PYTHONPATH). What the hook
does is chosen by environment variables, so one config serves the
uninterrupted run, the run that is killed and the resumed run:

- ``MMGC_FAULT=kill_after_iter:N``: SIGKILL this process right after
  training iteration ``N`` (1-based, counted over the whole run);
- ``MMGC_FAULT=hang_after_iter:N``: sleep for an hour after iteration ``N``
  (a hung worker: it answers signals, but never reaches the next collective);
- ``MMGC_FAULT=raise_after_iter:N``: raise a ``ValueError`` after iteration
  ``N`` (a bug inside training, which the tools must not end in one line);
- ``MMGC_FAULT=kill_in_save:E``: while the epoch-``E`` checkpoint is written,
  end the process when half of its bytes are on disk. The hook lowers the
  file-size limit (``RLIMIT_FSIZE``) to half the checkpoint's size and
  restores ``SIGXFSZ``'s default action, which Python ignores: the write that
  crosses the limit makes the kernel end the process on the spot, like
  SIGKILL (no Python code runs after it), with a half-written file;
- ``MMGC_FAULT_RANK=R``: only rank ``R`` is faulted (default: every rank).

Every rank also writes its pid to ``<work_dir>/pid.rank<r>`` before training.

:class:`OptimStateDumpHook` saves the optimizer as training starts (after
any resume) to ``<work_dir>/optim_at_start.pth``: its class, its groups'
options and each parameter's momentum buffer keyed by parameter name.
"""

import io
import os
import os.path as osp
import resource
import signal
import time

import torch
from mmengine.hooks import Hook
from mmengine.registry import HOOKS


def _fault():
    spec = os.environ.get('MMGC_FAULT', '')
    if not spec:
        return None, None
    kind, _, value = spec.partition(':')
    return kind, int(value)


def _faulted_rank(runner) -> bool:
    rank = os.environ.get('MMGC_FAULT_RANK')
    return rank is None or int(rank) == runner.rank


@HOOKS.register_module()
class FaultInjectionHook(Hook):
    """Kill or hang the run where ``MMGC_FAULT`` says (see the module doc)."""

    priority = 'VERY_LOW'  # after the logger printed the iteration

    def before_train(self, runner) -> None:
        with open(osp.join(runner.work_dir, f'pid.rank{runner.rank}'), 'w') as f:
            f.write(str(os.getpid()))

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        kind, value = _fault()
        if runner.iter + 1 != value or not _faulted_rank(runner):
            return
        if kind == 'kill_after_iter':
            os.kill(os.getpid(), signal.SIGKILL)
        elif kind == 'hang_after_iter':
            time.sleep(3600)
        elif kind == 'raise_after_iter':
            raise ValueError(f'fault injected after iteration {value}')

    def before_save_checkpoint(self, runner, checkpoint) -> None:
        kind, value = _fault()
        if kind != 'kill_in_save' or checkpoint['meta']['epoch'] != value:
            return
        with io.BytesIO() as buffer:
            torch.save(checkpoint, buffer)
            size = buffer.tell()
        resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))
        hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
        resource.setrlimit(resource.RLIMIT_FSIZE, (size // 2, hard))
        signal.signal(signal.SIGXFSZ, signal.SIG_DFL)


@HOOKS.register_module()
class OptimStateDumpHook(Hook):
    """Save the optimizer's class, groups and momentum buffers by name."""

    def before_train(self, runner) -> None:
        model = runner.model.module if hasattr(runner.model, 'module') else runner.model
        optimizer = runner.optim_wrapper.optimizer
        buffers = {}
        for name, param in model.named_parameters():
            state = optimizer.state.get(param, {})
            if 'momentum_buffer' in state:
                buffers[name] = state['momentum_buffer'].detach().clone()
        groups = [
            {k: v for k, v in group.items() if k != 'params'} | {'size': len(group['params'])}
            for group in optimizer.param_groups
        ]
        torch.save(
            dict(
                optimizer=type(optimizer).__name__,
                groups=groups,
                buffers=buffers,
                names=[name for name, _ in model.named_parameters()],
            ),
            osp.join(runner.work_dir, 'optim_at_start.pth'),
        )
