"""A 2-process CPU run (tools/dist_train.sh, torchrun, gloo) losing a process.

- One rank is SIGKILLed after its first iteration: the other one either
  sees the closed connection (gloo) and fails with gloo's error, or is
  stopped by torchrun, which sees the dead worker, whichever comes first;
  the run fails with torchrun's summary naming the killed rank, and
  dist_train.sh's one-line message.
- One rank hangs after its first iteration (alive, answering signals, but
  never joining the next gradient all-reduce): torchrun cannot see that;
  the other rank gives up after ``--dist-timeout`` seconds with gloo's
  timeout error, which torchrun's summary names as the root cause, and
  torchrun then stops the hung one.

Both runs must end by themselves, well within the subprocess timeout.
"""

from __future__ import annotations

import signal
import sys

import pytest

pytestmark = pytest.mark.slow

#: The runs end in ~15 s; a hang would be stopped here and fail the test.
LIMIT = 90


def _dist_train(tools, work_dir, *extra, faults):
    return tools.run(
        [
            'bash',
            'tools/dist_train.sh',
            tools.configs / 'mask_rcnn_tiny_gc_dist_fault.py',
            '2',
            '--work-dir',
            work_dir,
            *extra,
            '--cfg-options',
            *tools.data_options(splits=('train', 'test')),
        ],
        {'PYTHON': sys.executable, 'PORT': str(tools.free_port()), **faults},
        timeout=LIMIT,
    )


def test_sigkilled_rank_stops_the_run(tools, tmp_path):
    proc = _dist_train(
        tools,
        tmp_path / 'work',
        faults={'MMGC_FAULT': 'kill_after_iter:1', 'MMGC_FAULT_RANK': '1'},
    )
    log = tools.output(proc)
    assert proc.returncode != 0
    assert (tmp_path / 'work' / 'pid.rank0').is_file()  # both ranks trained
    summary = log[log.index('tools/train.py FAILED') :]
    assert f'Signal {int(signal.SIGKILL)} (SIGKILL) received by PID' in summary
    # Rank 0 either noticed the dead peer first (gloo: connection reset or
    # closed) or was stopped by torchrun: never a hang. torch 2.13's summary
    # lists the stopped rank; torch 2.1's only logs that it sent SIGTERM.
    survivor = (tmp_path / 'work' / 'pid.rank0').read_text()
    assert (
        'Connection reset by peer' in summary
        or 'Connection closed by peer' in summary
        or f'Signal {int(signal.SIGTERM)} (SIGTERM) received by PID' in summary
        or f'Sending process {survivor} closing signal SIGTERM' in log
    ), log
    assert tools.last_line(proc).startswith(
        'dist_train.sh: the distributed run failed (torchrun exit status 1)'
    )
    assert not (tmp_path / 'work' / 'epoch_1.pth').exists()


def test_hung_rank_times_out(tools, tmp_path):
    # --dist-timeout wins over MMGC_DIST_TIMEOUT (test_fault_units.py).
    faults = {'MMGC_FAULT': 'hang_after_iter:1', 'MMGC_FAULT_RANK': '1', 'MMGC_DIST_TIMEOUT': '600'}
    proc = _dist_train(tools, tmp_path / 'work', '--dist-timeout', '3', faults=faults)
    log = tools.output(proc)
    assert proc.returncode != 0
    # torchrun's summary names rank 0's gloo timeout (3 s) as the root cause ...
    root_cause = log[log.index('Root Cause') :]
    assert 'rank      : 0' in root_cause, root_cause
    assert 'Timed out waiting 3000ms' in root_cause, root_cause
    # ... the hung rank was stopped, not left behind ...
    hung_pid = (tmp_path / 'work' / 'pid.rank1').read_text()
    assert f'Sending process {hung_pid} closing signal SIGTERM' in log
    assert "dist_cfg=dict(backend='gloo', timeout=3.0)" in log
    # ... and the script's last line says what to do.
    assert tools.last_line(proc).startswith(
        'dist_train.sh: the distributed run failed (torchrun exit status 1)'
    )
    assert 'resume with --resume' in tools.last_line(proc)
