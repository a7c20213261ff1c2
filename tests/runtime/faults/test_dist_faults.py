"""A 2-process CPU run (tools/dist_train.sh, torchrun, gloo) losing a process.

- One rank is SIGKILLed after its first iteration: the other one either
  sees the closed connection (gloo) and ends with one sentence, or is
  stopped by torchrun, which sees the dead worker, whichever comes first;
  the run fails with torchrun's summary naming the killed rank, and
  dist_train.sh's one-line message.
- One rank hangs after its first iteration (alive, answering signals, but
  never joining the next gradient all-reduce): torchrun cannot see that;
  the other rank gives up after ``--dist-timeout`` seconds with one sentence
  (``DistributedRunError``), and torchrun then stops the hung one.

Both runs must end by themselves, well within the subprocess timeout.
"""

from __future__ import annotations

import signal
import sys

import pytest

from mmgc.runtime.shapes import make_shapes_dataset

from ._tools import GC_DIST_FAULT, data_options, free_port, output, run

pytestmark = pytest.mark.slow

#: The runs end in ~15 s; a hang would be stopped here and fail the test.
LIMIT = 90


@pytest.fixture(scope='module')
def shapes(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp('shapes')
    return make_shapes_dataset(root, num_train=8, num_val=4, image_size=64, seed=0)


def _dist_train(shapes, work_dir, *extra, faults):
    return run(
        [
            'bash',
            'tools/dist_train.sh',
            GC_DIST_FAULT,
            '2',
            '--work-dir',
            work_dir,
            *extra,
            '--cfg-options',
            *data_options(shapes),
        ],
        {'PYTHON': sys.executable, 'PORT': str(free_port()), **faults},
        timeout=LIMIT,
    )


def test_sigkilled_rank_stops_the_run(shapes, tmp_path):
    proc = _dist_train(
        shapes,
        tmp_path / 'work',
        faults={'MMGC_FAULT': 'kill_after_iter:1', 'MMGC_FAULT_RANK': '1'},
    )
    log = output(proc)
    assert proc.returncode != 0
    assert (tmp_path / 'work' / 'pid.rank0').is_file()  # both ranks trained
    summary = log[log.index('tools/train.py FAILED') :]
    assert f'Signal {int(signal.SIGKILL)} (SIGKILL) received by PID' in summary
    # Rank 0 either noticed the dead peer first (gloo: connection reset) and
    # ended with one sentence, or was stopped by torchrun: never a hang.
    assert (
        'DistributedRunError: Rank 0 of 2 lost the other processes of the distributed run'
        in summary
        or f'Signal {int(signal.SIGTERM)} (SIGTERM) received by PID' in summary
    ), summary
    assert (
        proc.stderr.strip()
        .splitlines()[-1]
        .startswith('dist_train.sh: the distributed run failed (torchrun exit status 1)')
    )
    assert not (tmp_path / 'work' / 'epoch_1.pth').exists()


def test_hung_rank_times_out_with_one_sentence(shapes, tmp_path):
    # --dist-timeout wins over MMGC_DIST_TIMEOUT (tests/faults/test_fault_units.py).
    faults = {'MMGC_FAULT': 'hang_after_iter:1', 'MMGC_FAULT_RANK': '1', 'MMGC_DIST_TIMEOUT': '600'}
    proc = _dist_train(shapes, tmp_path / 'work', '--dist-timeout', '3', faults=faults)
    log = output(proc)
    assert proc.returncode != 0
    assert (
        'DistributedRunError: Rank 0 of 2 lost the other processes of the distributed run '
        '(Timed out waiting 3000ms'
    ) in log, log[-4000:]
    assert 'did not answer within the timeout of 3 s (set it with --dist-timeout' in log
    # torchrun's summary names rank 0's error as the root cause ...
    root_cause = log[log.index('Root Cause') :]
    assert 'rank      : 0' in root_cause and 'DistributedRunError' in root_cause
    # ... and the hung rank was stopped, not left behind.
    assert f'Signal {int(signal.SIGTERM)} (SIGTERM) received' in log
    assert "dist_cfg=dict(backend='gloo', timeout=3.0)" in log
