"""The distributed launch scripts pick the project's Python (tools/_python.sh).

They run here with stand-ins: a ``python`` that records how it was called
and an ``srun`` that does the same, so no process group is started."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

RECORDER = '#!/usr/bin/env bash\nprintf "%s\\n" "$0" "$@" > "$RECORD"\n'
SCRIPTS = ('dist_train.sh', 'dist_test.sh', '_dist_run.sh', 'slurm_train.sh', '_slurm_run.sh')


def _recorder(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(RECORDER)
    path.chmod(0o755)
    return path


@pytest.fixture
def repo(tools, tmp_path) -> Path:
    """A copy of the launch scripts in a repository of their own."""
    (tmp_path / 'repo' / 'tools').mkdir(parents=True)
    for name in (*SCRIPTS, '_python.sh'):
        shutil.copy(tools.root / 'tools' / name, tmp_path / 'repo' / 'tools' / name)
    return tmp_path / 'repo'


@pytest.fixture
def launch(tools, repo, tmp_path):
    """``launch(script, *args, **env)``: :func:`_launch` in this test's folders."""
    return lambda *args, **env: _launch(tools, repo, tmp_path, list(args), **env)


def _launch(tools, repo: Path, tmp_path: Path, args: list[str], **env: str):
    record = tmp_path / 'record.txt'
    full = tools.env(RECORD=str(record), **env)
    if 'PYTHON' not in env:
        full.pop('PYTHON', None)
    full['PATH'] = f'{tmp_path / "bin"}{os.pathsep}{full["PATH"]}'  # the fake srun
    _recorder(tmp_path / 'bin' / 'srun')
    proc = subprocess.run(
        ['bash', repo / 'tools' / args[0], *args[1:]],
        env=full,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return proc, record.read_text().splitlines() if record.exists() else []


def test_dist_train_uses_the_repository_venv(launch, repo, tmp_path):
    venv_python = _recorder(repo / '.venv' / 'bin' / 'python')
    proc, called = launch('dist_train.sh', 'cfg.py', '2', '--amp')
    assert proc.returncode == 0, proc.stderr
    assert called[0] == str(venv_python)
    assert called[1:3] == ['-m', 'torch.distributed.run']
    assert '--nproc_per_node=2' in called
    assert called[-5:] == [
        str(repo / 'tools' / 'train.py'),
        *'cfg.py --amp --launcher pytorch'.split(),
    ]


def test_mmgc_venv_wins_over_the_repository_venv(launch, repo, tmp_path):
    _recorder(repo / '.venv' / 'bin' / 'python')
    other = _recorder(tmp_path / 'other_venv' / 'bin' / 'python')
    proc, called = launch(
        'dist_test.sh', 'cfg.py', 'ckpt.pth', '1', MMGC_VENV=str(tmp_path / 'other_venv')
    )
    assert proc.returncode == 0, proc.stderr
    assert called[0] == str(other)
    assert called[-5:] == [
        str(repo / 'tools' / 'test.py'),
        *'cfg.py ckpt.pth --launcher pytorch'.split(),
    ]


def test_python_wins_over_every_venv(launch, repo, tmp_path):
    _recorder(repo / '.venv' / 'bin' / 'python')
    chosen = _recorder(tmp_path / 'chosen' / 'python3')
    proc, called = launch(
        'dist_train.sh', 'cfg.py', '1', PYTHON=str(chosen), MMGC_VENV=str(tmp_path / 'nowhere')
    )
    assert proc.returncode == 0, proc.stderr
    assert called[0] == str(chosen)


def test_a_missing_mmgc_venv_is_an_error(launch, repo, tmp_path):
    proc, called = launch('dist_train.sh', 'cfg.py', '1', MMGC_VENV=str(tmp_path / 'nowhere'))
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f'_dist_run.sh: MMGC_VENV={tmp_path / "nowhere"} has no bin/python; run '
        'tools/setup_env.sh, or unset MMGC_VENV'
    )
    assert called == []


def test_slurm_train_runs_the_venv_python_under_srun(launch, repo, tmp_path):
    venv_python = _recorder(repo / '.venv' / 'bin' / 'python')
    proc, called = launch(
        'slurm_train.sh', 'gpu', 'job', 'cfg.py', 'work', GPUS='4', GPUS_PER_NODE='0'
    )
    assert proc.returncode == 0, proc.stderr
    assert called[0].endswith('/bin/srun')
    assert '--ntasks=4' in called and not any(a.startswith('--gres') for a in called)
    start = called.index(str(venv_python))
    train = str(repo / 'tools' / 'train.py')
    assert called[start:] == [
        str(venv_python),
        '-u',
        train,
        *'cfg.py --work-dir=work --launcher=slurm'.split(),
    ]
