"""The stacks of tools/setup_env.sh (tools/_stack.sh) and the other codebases
(issue 29): MMSegmentation, with the modules it imports but does not declare, on
both stacks; MMPretrain with its torchvision only on the torch 2.1 stack; never a
torchvision that cannot load beside the stack's torch (``check_torchvision``
refuses it in one sentence); and none of them a requirement of ``pip install mmgc``."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT


def _stack(name: str, *values: str, env: dict | None = None) -> list[str]:
    """What tools/_stack.sh sets for stack ``name``: one line per value (arrays joined)."""
    script = f'ROOT={ROOT}; source {ROOT}/tools/_stack.sh; ' + '; '.join(
        f'echo "{value}"' for value in values
    )
    out = subprocess.run(
        ['bash', '-c', script],
        env={**os.environ, 'MMGC_STACK': name, **(env or {})},
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.splitlines()


def _check_torchvision(pythonpath: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    if pythonpath:
        env['PYTHONPATH'] = pythonpath
    script = f'ROOT={ROOT}; source {ROOT}/tools/_stack.sh; check_torchvision "$0"'
    return subprocess.run(
        ['bash', '-c', script, sys.executable], env=env, capture_output=True, text=True
    )


def test_a_torchvision_that_cannot_load_is_refused_in_one_sentence(tmp_path):
    """A torchvision built for another torch fails at import (PyPI's 0.28 beside the CPU
    torch 2.13: "operator torchvision::nms does not exist"); a stand-in that fails the
    same way, first on the path."""
    package = tmp_path / 'torchvision'
    package.mkdir()
    (package / '__init__.py').write_text(
        "raise RuntimeError('operator torchvision::nms does not exist')\n"
    )
    info = tmp_path / 'torchvision-0.28.0.dist-info'
    info.mkdir()
    (info / 'METADATA').write_text('Metadata-Version: 2.1\nName: torchvision\nVersion: 0.28.0\n')
    proc = _check_torchvision(str(tmp_path))
    assert proc.returncode == 1, proc
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(
        f'refusing torchvision 0.28.0: it cannot load beside torch {torch.__version__} '
        '(RuntimeError: operator torchvision::nms does not exist); uninstall it'
    ), lines


def test_this_stacks_torchvision_loads():
    proc = _check_torchvision(None)
    assert (proc.returncode, proc.stderr) == (0, '')


def _this_stack() -> str:
    for name in ('newest', 'oldest'):
        if Path(_stack(name, '$VENV')[0]).resolve() == Path(sys.prefix).resolve():
            return name
    pytest.skip(f'{sys.prefix} is not the virtualenv of a tested stack (tools/_stack.sh)')


def test_the_stack_has_the_codebases_it_lists():
    stack = _this_stack()
    torchvision, codebases = _stack(stack, '$TORCHVISION', '${CODEBASES[*]}')
    for pin in codebases.split():
        name, _, version = pin.partition('==')
        installed = importlib.metadata.version(name)  # raises if not installed
        if version:
            assert installed.split('+')[0] == version, (pin, installed)
    import mmseg.models  # noqa: F401  (needs ftfy and regex)

    if stack == 'newest':  # no torchvision loads beside the CPU torch 2.13
        assert torchvision == '' and 'mmpretrain' not in codebases
        assert importlib.util.find_spec('torchvision') is None
        assert importlib.util.find_spec('mmpretrain') is None
    else:
        assert torchvision == 'torchvision==0.16.2' and 'mmpretrain==1.2.0' in codebases
        import mmpretrain.models  # noqa: F401


def test_pip_install_mmgc_requires_no_other_codebase():
    tomllib = pytest.importorskip('tomllib', reason='Python < 3.11 has no tomllib')
    project = tomllib.loads((ROOT / 'pyproject.toml').read_text())['project']
    required = ' '.join(project['dependencies']).lower()
    for name in ('mmseg', 'mmpretrain', 'torchvision', 'ftfy', 'regex', 'mmdet'):
        assert name not in required, project['dependencies']
    extras = project['optional-dependencies']
    assert extras['mmseg'] == ['mmsegmentation>=1.2.2,<1.3', 'ftfy', 'regex']
    assert extras['mmpretrain'] == ['mmpretrain>=1.2.0,<1.3']
