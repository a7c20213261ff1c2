"""``tools/check_gpu.sh``, run for real: with ``--device cpu`` every section
runs its CPU stand-in (the same code a GPU run takes, at tiny sizes) and
passes; a failing section and bad options give the documented exit status."""

from __future__ import annotations

import re
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch

TITLES = (
    '1. CUDA tests',
    '2. Two-process run',
    '3. Optimizer step benchmark (bench_step.py)',
    '4. Mask R-CNN R50-FPN end to end',
)


def _check_gpu(tools, *args, env: dict | None = None) -> subprocess.CompletedProcess:
    """``bash tools/check_gpu.sh ARGS`` with this interpreter (the suite's harness)."""
    run_env = {'PYTHON': sys.executable, **(env or {})}
    return tools.run(['bash', 'tools/check_gpu.sh', *args], env=run_env, timeout=420)


@pytest.mark.slow
def test_cpu_run_passes_every_section_with_numbers(tools, tmp_path, exit_probe):
    proc = _check_gpu(tools, '--device', 'cpu', '--out-dir', tmp_path, env=exit_probe.env())
    report_path = tmp_path / 'report.md'
    # on a failure, the report too: it holds the failing section's log tail
    shown = report_path.read_text() if report_path.is_file() else '(no report)'
    assert proc.returncode == 0, tools.output(proc) + '\n' + shown
    assert proc.stdout.strip().splitlines()[-1] == f'check_gpu: PASS; report: {report_path}'
    report = report_path.read_text()
    assert report.startswith('# mmgc GPU check (cpu): PASS')
    for title in TITLES:  # summary row and section, each a PASS
        assert re.search(rf'^\| {re.escape(title)} \| PASS \| [^|]+', report, re.M), title
        assert f'## {title}: PASS' in report, title
    assert 'FAIL' not in report and 'SKIPPED' not in report

    # 1: the CPU counterparts of the cuda tests ran and none failed
    tests = re.search(r'\| 1\. CUDA tests \| PASS \| (\d+) passed, 0 failed, 0 errors', report)
    assert tests and int(tests.group(1)) >= 10  # torch 2.1 skips the rest by feature
    # 2: two gloo processes, their agreement and the weight sums measured
    assert '2 gloo processes agree' in report
    exit_probe.assert_ended('gpu_check.py', ranks=2)  # each worker ended its group
    assert re.search(r'\| ranks agree[^|]*\| 0 \| <= 1e-06 \| ok \|', report)
    # 3: bench_step.py's table, with SGDGC's default path in it, its ratio in the reason
    assert re.search(r'^\| SGDGC default', report, re.M)
    assert re.search(r'SGDGC default / torch SGD without GC: mask_rcnn_r50 \d+\.\d\d \|', report)
    # 4: both twins trained, ms/iter each and the overhead ratio
    e2e = re.search(
        r'SGD ([\d.]+) ms/iter, SGDGC ([\d.]+) ms/iter: overhead ([\d.]+)x \(R18-FPN', report
    )
    assert e2e, report
    sgd, sgdgc, ratio = map(float, e2e.groups())
    assert sgd > 0 and sgdgc > 0
    assert ratio == pytest.approx(sgdgc / sgd, abs=2e-3)
    rows = re.findall(
        r'^\| SGDG?C? \(configs/[^|]+\| [\d.]+ \| [\d.]+ \| ([\d.]+) \| ([\d.]+) \|$', report, re.M
    )
    assert len(rows) == 2, report  # first and last loss of each twin
    (base_first, _), (gc_first, _) = rows
    assert float(base_first) > 0 and float(gc_first) == pytest.approx(float(base_first), rel=1e-3)


def test_failing_section_fails_the_run(tools, tmp_path):
    """A section that fails for real (bench_step.py on a model it cannot
    build) is a FAIL with its log, and the exit status is 1."""
    proc = _check_gpu(
        tools,
        '--device',
        'cpu',
        '--sections',
        'bench',
        '--bench-models',
        tmp_path / 'no_such_config.py',
        '--out-dir',
        tmp_path,
    )
    assert proc.returncode == 1, tools.output(proc)
    report = (tmp_path / 'report.md').read_text()
    assert report.startswith('# mmgc GPU check (cpu): FAIL (1 of 1 sections)')
    assert re.search(r'\| 3\. [^|]+\| FAIL \| bench_step\.py exit status [1-9]', report)
    assert 'no_such_config.py' in report  # the log's tail says what went wrong
    assert proc.stdout.strip().splitlines()[-1].startswith('check_gpu: FAIL; report: ')


@pytest.mark.skipif(torch.cuda.is_available(), reason='this machine has a CUDA GPU')
def test_cuda_without_a_gpu_is_one_line_exit_2(tools, tmp_path):
    proc = _check_gpu(tools, '--out-dir', tmp_path)
    assert proc.returncode == 2, tools.output(proc)
    assert proc.stderr.strip() == (
        f'check_gpu: --device cuda, but torch {torch.__version__} sees no CUDA GPU; '
        f'run with --device cpu for the CPU stand-in'
    )
    assert not (tmp_path / 'report.md').exists()


def _wheel(folder, name: str) -> None:
    """A minimal pure-Python wheel holding the module ``name``."""
    info = f'{name}-1.0.dist-info'
    files = {
        f'{name}.py': 'VALUE = 42\n',
        f'{info}/METADATA': f'Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n',
        f'{info}/WHEEL': (
            'Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n'
        ),
    }
    record = ''.join(f'{path},,\n' for path in files) + f'{info}/RECORD,,\n'
    with zipfile.ZipFile(folder / f'{name}-1.0-py3-none-any.whl', 'w') as whl:
        for path, text in {**files, f'{info}/RECORD': record}.items():
            whl.writestr(path, text)


@pytest.mark.skipif(torch.cuda.is_available(), reason='this machine has a CUDA GPU')
def test_wheels_are_installed_before_the_check_starts(tools, tmp_path):
    """``--wheels DIR`` installs DIR's wheels without an index into a folder
    on PYTHONPATH; the check then starts (here: stops at once, no GPU)."""
    wheels = tmp_path / 'wheels'
    wheels.mkdir()
    _wheel(wheels, 'mmgc_wheel_probe')
    proc = _check_gpu(
        tools, '--wheels', wheels, '--out-dir', tmp_path / 'out', env={'TMPDIR': str(tmp_path)}
    )
    assert proc.returncode == 2, tools.output(proc)
    line = proc.stdout.strip().splitlines()[0]
    match = re.fullmatch(
        rf'check_gpu.sh: installed 1 wheels from {re.escape(str(wheels))} into (\S+)', line
    )
    assert match, line
    assert (tmp_path / match.group(1) / 'mmgc_wheel_probe.py').read_text() == 'VALUE = 42\n'


@pytest.mark.parametrize(
    ('args', 'message'),
    [
        (
            ['--wheels', '/no/such/folder'],
            "--wheels needs a folder of .whl files; got '/no/such/folder'",
        ),
        (['--wheels'], "--wheels needs a folder of .whl files; got ''"),
        (['--e2e-iters', '0', '--device', 'cpu'], '--e2e-iters must be >= 1; got 0'),
    ],
)
def test_bad_options_are_one_line_exit_2(tools, tmp_path, args, message):
    proc = _check_gpu(tools, '--out-dir', tmp_path, *args)
    assert proc.returncode == 2, tools.output(proc)
    assert proc.stderr.strip().splitlines()[-1].endswith(message)
    assert not (tmp_path / 'report.md').exists()


def test_empty_wheel_folder_is_refused(tools, tmp_path):
    proc = _check_gpu(tools, '--wheels', tmp_path, '--device', 'cpu')
    assert proc.returncode == 2, tools.output(proc)
    assert proc.stderr.strip() == f'check_gpu.sh: --wheels {tmp_path} holds no .whl file'


def test_a_section_past_its_time_limit_is_killed_with_its_children(tmp_path):
    """``run_logged`` (how every section runs) kills the whole process group
    on a timeout: a child the command started does not outlive it."""
    from benchmarks.gpu_check import run_logged

    pid_file, log = tmp_path / 'child.pid', tmp_path / 'run.log'
    script = f'sleep 600 & echo $! > {pid_file}; wait'
    assert run_logged(['bash', '-c', script], {}, timeout=2, log=log) is None
    child = int(pid_file.read_text())
    for _ in range(300):  # SIGKILL is delivered when the child is next scheduled
        if _proc_state(child) in ('gone', 'Z'):
            break
        time.sleep(0.1)
    assert _proc_state(child) in ('gone', 'Z')
    assert log.read_text().startswith('$ bash -c ')
    assert run_logged(['bash', '-c', 'exit 3'], {}, timeout=60, log=log) == 3


def _proc_state(pid: int) -> str:
    """The state letter of ``/proc/PID/stat`` ('Z': a zombie, already dead)."""
    try:
        return Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()[0]
    except FileNotFoundError:
        return 'gone'
