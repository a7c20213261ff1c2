"""CPU distributed runs (mmgc.runtime.distributed): the ``--dist-timeout``
option and ``MMGC_DIST_TIMEOUT``, and a 2-process CPU run (tools/dist_train.sh,
torchrun, gloo): two ranks keep identical weights, and a run losing a
process.

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
import torch
from mmengine.config import Config

from mmgc.runtime.distributed import DIST_TIMEOUT_ENV, parse_dist_timeout, set_dist_timeout
from mmgc.runtime.errors import ConfigError


@pytest.mark.parametrize('bad', ['0', '-5', 'abc', 'inf', 'nan', '', None])
def test_dist_timeout_must_be_positive_seconds(bad):
    with pytest.raises(ConfigError, match=r'--dist-timeout must be a positive number of seconds'):
        parse_dist_timeout(bad)


def test_dist_timeout_precedence(monkeypatch):
    cfg = Config(dict(env_cfg=dict(dist_cfg=dict(backend='nccl', timeout=1800))))
    monkeypatch.delenv(DIST_TIMEOUT_ENV, raising=False)
    assert set_dist_timeout(cfg) == 1800.0  # the config's own value
    monkeypatch.setenv(DIST_TIMEOUT_ENV, '60')
    assert set_dist_timeout(cfg) == 60.0
    assert cfg.env_cfg.dist_cfg.timeout == 60.0
    assert set_dist_timeout(cfg, '7.5') == 7.5  # the option wins
    assert cfg.env_cfg.dist_cfg == dict(backend='nccl', timeout=7.5)
    monkeypatch.setenv(DIST_TIMEOUT_ENV, 'soon')
    with pytest.raises(ConfigError, match=r"MMGC_DIST_TIMEOUT must be .*; got 'soon'"):
        set_dist_timeout(cfg)


#: The runs end in ~15 s; a hang would be stopped here and fail the test.
LIMIT = 90


def _dist_run(tools, script, *args, env=None, timeout=LIMIT):
    """``tools/SCRIPT ARGS`` (``dist_train.sh`` / ``dist_test.sh``) on the tiny data."""
    data = tools.data_options(splits=('train', 'test'))
    env = {'PYTHON': sys.executable, 'PORT': str(tools.free_port()), **(env or {})}
    return tools.run(['bash', f'tools/{script}', *args, '--cfg-options', *data], env, timeout)


def _dist_train(
    tools, work_dir, *extra, faults=None, config='mask_rcnn_tiny_gc_dist_fault.py', timeout=LIMIT
):
    """``tools/dist_train.sh CONFIG 2`` (``tests/data/configs``), no validation."""
    args = [tools.configs / config, '2', '--work-dir', work_dir, *extra]
    return _dist_run(tools, 'dist_train.sh', *args, env=faults, timeout=timeout)


@pytest.mark.slow
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


#: The hang test's --dist-timeout. It bounds every collective, start-up ones
#: included, and rank 0 alone formats and writes the config (MMEngine's
#: Runner.dump_config) between DDP's wrap and the broadcast of the initial
#: weights: with 3 s, rank 1 timed out there on a loaded 2-core CI machine
#: (docs/tools.md, "Distributed").
HANG_TIMEOUT_S = 20


@pytest.mark.slow
def test_hung_rank_times_out(tools, tmp_path):
    # --dist-timeout wins over MMGC_DIST_TIMEOUT (test_dist_timeout_precedence).
    faults = {'MMGC_FAULT': 'hang_after_iter:1', 'MMGC_FAULT_RANK': '1', 'MMGC_DIST_TIMEOUT': '600'}
    timeout = ['--dist-timeout', str(HANG_TIMEOUT_S)]
    proc = _dist_train(tools, tmp_path / 'work', *timeout, faults=faults)
    log = tools.output(proc)
    assert proc.returncode != 0
    # torchrun's summary names rank 0's gloo timeout (3 s) as the root cause ...
    root_cause = log[log.index('Root Cause') :]
    assert 'rank      : 0' in root_cause, root_cause
    assert f'Timed out waiting {HANG_TIMEOUT_S * 1000}ms' in root_cause, root_cause
    # ... the hung rank was stopped, not left behind ...
    hung_pid = (tmp_path / 'work' / 'pid.rank1').read_text()
    assert f'Sending process {hung_pid} closing signal SIGTERM' in log
    assert f"dist_cfg=dict(backend='gloo', timeout={float(HANG_TIMEOUT_S)})" in log
    # ... and the script's last line says what to do.
    assert tools.last_line(proc).startswith(
        'dist_train.sh: the distributed run failed (torchrun exit status 1)'
    )
    assert 'resume with --resume' in tools.last_line(proc)


@pytest.mark.slow
def test_dist_train_two_cpu_processes_keep_identical_weights(tools, tmp_path, exit_probe):
    """... and every rank of dist_train.sh, then of dist_test.sh on its checkpoint,
    exits with its process group ended (``tests/data/exit_probe``)."""
    work_dir, config = tmp_path / 'dist', 'mask_rcnn_tiny_gc_dist.py'
    probe = exit_probe.env()
    proc = tools.ok(_dist_train(tools, work_dir, config=config, faults=probe, timeout=None))
    assert "dist_cfg=dict(backend='gloo')" in tools.output(proc)
    exit_probe.assert_ended('train.py', ranks=2)
    args = [tools.configs / config, work_dir / 'epoch_1.pth', '2', '--work-dir', tmp_path / 'test']
    tools.ok(_dist_run(tools, 'dist_test.sh', *args, env=probe))
    assert (tmp_path / 'test' / 'test_metrics.json').is_file()
    exit_probe.assert_ended('test.py', ranks=2)
    dumps = {
        (rank, when): torch.load(work_dir / f'rank{rank}_{when}.pth', weights_only=True)
        for rank in (0, 1)
        for when in ('before', 'after')
    }
    assert dumps[0, 'after']['world_size'] == 2
    assert dumps[0, 'after']['wrapper'] == 'CPUDistributedDataParallel'
    # The ranks trained on different halves of the 8 images ...
    ids0, ids1 = dumps[0, 'after']['img_ids'], dumps[1, 'after']['img_ids']
    assert len(ids0) == len(ids1) == 4
    assert not set(ids0) & set(ids1)
    # ... their weights moved ...
    before, after = dumps[0, 'before']['state_dict'], dumps[0, 'after']['state_dict']
    assert any(not torch.equal(before[k], after[k]) for k in before)
    # ... and stayed identical across ranks (DDP averaged the gradients).
    other = dumps[1, 'after']['state_dict']
    assert after.keys() == other.keys()
    for key, value in after.items():
        torch.testing.assert_close(other[key], value, rtol=0, atol=0)


@pytest.mark.slow
def test_a_users_error_after_the_group_started_ends_it(tools, tmp_path, exit_probe):
    """A GC run under FSDP1 is refused (one line, exit status 2) after the ranks
    started their process group: each rank still ends it."""
    option = ['--cfg-options', 'strategy.type=FSDPStrategy']
    proc = _dist_train(tools, tmp_path / 'work', *option, faults=exit_probe.env())
    assert proc.returncode != 0
    refused = "ConfigError: gradient centralization cannot run under strategy 'FSDPStrategy'"
    assert refused in tools.output(proc)
    exit_probe.assert_ended('train.py', ranks=2)


#: A rank of one that starts a gloo group and returns, with ``end`` (``ends_process_group``)
#: or without it.
_ONE_RANK = """
import sys, torch, torch.distributed as dist
from mmgc.runtime.distributed import ends_process_group

def main():
    dist.init_process_group('gloo', init_method=sys.argv[1], rank=0, world_size=1)
    dist.all_reduce(torch.ones(1))

if sys.argv[2] == 'end':
    main = ends_process_group(main)
main()
"""


@pytest.mark.parametrize('end', ['end', 'keep'])
def test_the_exit_probe_sees_a_live_group(tools, tmp_path, exit_probe, end):
    """The probe's control: a process that keeps its group is seen with it alive
    and finalizing; one that ends it leaves through ``os._exit``, with status 0,
    after the ``atexit`` handlers (the probe's among them) ran."""
    store = f'file://{tmp_path / "store"}'
    env = {**exit_probe.env(), 'RANK': '0'}
    proc = tools.run([sys.executable, '-c', _ONE_RANK, store, end], env)
    (record,) = exit_probe.records('-c')
    assert record['imported_dist'] and record['alive'] is (end == 'keep'), record
    assert record['finalizes'] is (end == 'keep'), record
    if end == 'end':
        assert proc.returncode == 0, proc.stderr
    else:
        assert record['groups'] == 1, record


#: A rank of one whose ``main`` (under ``ends_process_group``) starts a group, registers
#: an ``atexit`` handler and ends as ``sys.argv[2]`` says.
_ENDING = """
import atexit, sys, threading, time, torch, torch.distributed as dist
from mmgc.runtime.distributed import ends_process_group

@ends_process_group
def main():
    dist.init_process_group('gloo', init_method=sys.argv[1], rank=0, world_size=1)
    dist.all_reduce(torch.ones(1), async_op=True).wait()
    atexit.register(print, 'atexit handler ran', flush=True)
    threading.Thread(target=lambda: (time.sleep(0.5), print('thread done', flush=True))).start()
    print('to stdout, unflushed', end='')
    how = sys.argv[2]
    if how == 'error':
        raise ValueError('a bug')
    if how == 'exit':
        sys.exit(2)
    if how == 'message':
        sys.exit('a message')
    return 3 if how == 'status' else None

main()
"""


@pytest.mark.parametrize(
    ('how', 'status', 'on_stderr'),
    [
        ('return', 0, None),
        ('status', 3, None),
        ('exit', 2, None),
        ('message', 1, 'a message'),
        ('error', 1, 'ValueError: a bug'),
    ],
)
def test_ends_process_group_leaves_as_python_would(
    tools, tmp_path, exit_probe, how, status, on_stderr
):
    """However ``main`` ends, the process ends its group, waits for its other
    threads, runs the ``atexit`` handlers, flushes its output and exits with the
    status Python gives that ending (a traceback for an exception), without
    finalizing (the probe's ``finalizes``)."""
    store = f'file://{tmp_path / "store"}'
    env = {**exit_probe.env(), 'RANK': '0'}
    proc = tools.run([sys.executable, '-c', _ENDING, store, how], env)
    assert proc.returncode == status, proc.stderr
    assert proc.stdout.startswith('to stdout, unflushed'), proc.stdout
    assert 'thread done' in proc.stdout and 'atexit handler ran' in proc.stdout, proc.stdout
    if on_stderr:  # torch >= 2.4's excepthook puts '[rank0]: ' before each line
        assert proc.stderr.strip().splitlines()[-1].endswith(on_stderr), proc.stderr
    if how == 'error':
        assert 'Traceback (most recent call last)' in proc.stderr
    (record,) = exit_probe.records('-c')
    assert not record['alive'] and not record['finalizes'], record


def test_ends_process_group_keeps_a_group_it_did_not_start(tmp_path):
    """A group alive before ``main`` ran (a caller's) is left alive, and ``main``
    returns as usual; with none, ``main``'s error propagates as it is."""
    from mmgc.runtime.distributed import ends_process_group

    seen = []
    if not torch.distributed.is_initialized():
        with pytest.raises(ValueError, match='no group'):
            ends_process_group(lambda: (_ for _ in ()).throw(ValueError('no group')))()
    store = f'file://{tmp_path / "store"}'
    torch.distributed.init_process_group('gloo', init_method=store, rank=0, world_size=1)
    try:
        assert ends_process_group(lambda: seen.append(1) or 'kept')() == 'kept'
        assert torch.distributed.is_initialized() and seen == [1]
    finally:
        from mmgc.runtime.distributed import end_process_group

        assert end_process_group()
    assert not torch.distributed.is_initialized()
