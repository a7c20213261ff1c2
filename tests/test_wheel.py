"""mmgc installed from a wheel, not from the checkout (issue 20, "Installed, not cloned").

The wheel is built from a copy of the working tree (``pip wheel --no-deps
--no-build-isolation``), installed with ``--no-deps`` into a fresh virtualenv
that sees the stack's site-packages (torch, MMEngine, MMCV, MMDetection)
through a ``.pth`` line but not the repository: ``.pth`` files inside a
directory added that way are not run, so the stack's editable mmgc stays out,
and each run checks that ``mmgc`` is imported from the new virtualenv. Every
run starts in a folder outside the repository, with no ``PYTHONPATH`` and a
fresh ``MMGC_CACHE_DIR``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from mmengine.config import Config
from torch.testing import assert_close

from tests.conftest import ROOT, ok, without_scope
from tests.reference import ReferenceSGDGC

SCRIPTS = ('mmgc-train', 'mmgc-test', 'mmgc-compare-ap', 'mmgc-plot-gc-stats')


def _pip_version() -> tuple[int, ...]:
    from pip import __version__

    return tuple(int(p) for p in __version__.split('.')[:2] if p.isdigit())


def _packaging_missing() -> str:
    """Why a wheel cannot be built and installed here ('' if it can)."""
    for module in ('pip', 'setuptools', 'wheel', 'venv'):
        if importlib.util.find_spec(module) is None:
            return f'{module} is not installed'
    if _pip_version() < (22, 3):  # pip --python (install into another interpreter)
        return 'pip < 22.3 has no --python'
    return ''


_MISSING = _packaging_missing()
pytestmark = [pytest.mark.slow, pytest.mark.skipif(bool(_MISSING), reason=_MISSING or 'ok')]


def _run(args: list, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def _working_tree(dest: Path) -> Path:
    """Copy what the wheel is built from: tracked files and untracked ones git
    does not ignore (without git: the tree minus build outputs)."""
    try:
        listed = (
            subprocess.run(
                ['git', 'ls-files', '-z', '--cached', '--others', '--exclude-standard'],
                cwd=ROOT,
                capture_output=True,
                check=True,
            )
            .stdout.decode()
            .split('\0')
        )
    except (OSError, subprocess.CalledProcessError):
        ignore = shutil.ignore_patterns(
            '.git',
            '.venv*',
            'work_dirs',
            'data',
            'reports',
            'build',
            '*.egg-info',
            '.mim',
            '__pycache__',
        )
        shutil.copytree(ROOT, dest, ignore=ignore)
        return dest
    for name in filter(None, listed):
        src = ROOT / name
        if src.is_file():  # listed but deleted in the working tree: skipped
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


@pytest.fixture(scope='module')
def installed(tmp_path_factory) -> SimpleNamespace:
    """The built wheel and a virtualenv with it installed (see the module docstring)."""
    tmp = tmp_path_factory.mktemp('wheel')
    src = _working_tree(tmp / 'src')
    wheels = tmp / 'wheels'
    pip = [sys.executable, '-m', 'pip']
    quiet = ['--disable-pip-version-check', '--no-input', '-q']

    def run(*args) -> subprocess.CompletedProcess:
        return ok(_run(args, cwd=tmp))

    run(*pip, 'wheel', src, '--no-deps', '--no-build-isolation', '--no-index', '-w', wheels, *quiet)
    (wheel,) = wheels.glob('mmgc-*.whl')
    venv = tmp / 'venv'
    run(sys.executable, '-m', 'venv', '--without-pip', venv)
    python = venv / 'bin' / 'python'
    # installed before the stack is visible, so pip sees no other mmgc
    run(*pip, '--python', python, 'install', '--no-deps', '--no-index', wheel, *quiet)
    purelib = 'import sysconfig; print(sysconfig.get_paths()["purelib"])'
    venv_site = Path(run(python, '-c', purelib).stdout.strip())
    stack = dict.fromkeys([*site.getsitepackages(), sysconfig.get_paths()['purelib']])
    (venv_site / '_mmgc_test_stack.pth').write_text(''.join(f'{p}\n' for p in stack))
    user = tmp / 'user'  # the user's own folder, outside the repository
    user.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(('MMGC_', 'PYTHON'))}
    env.pop('VIRTUAL_ENV', None)
    env.update(OMP_NUM_THREADS='1', MMGC_CACHE_DIR=str(tmp / 'kernel-cache'))
    return SimpleNamespace(
        wheel=wheel,
        src=src,
        venv=venv,
        python=python,
        site=venv_site,
        bin=venv / 'bin',
        user=user,
        env=env,
        cache=tmp / 'kernel-cache',
        stack=list(stack),
    )


def _python(installed, code: str, *args) -> subprocess.CompletedProcess:
    """Run ``code`` with the virtualenv's Python in the user's folder."""
    return ok(_run([installed.python, '-c', code, *args], installed.user, installed.env))


def _script(installed, name: str, *args) -> subprocess.CompletedProcess:
    """Run the virtualenv's console script ``name`` in the user's folder."""
    return _run([installed.bin / name, *args], installed.user, installed.env)


def _last_json(proc: subprocess.CompletedProcess) -> dict:
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------ the wheel


def test_wheel_ships_kernel_source_configs_and_scripts(installed):
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    assert 'mmgc/csrc/sgd_gc_cpu.cpp' in names
    assert 'mmgc/.mim/model-index.yml' in names
    configs = {
        f'mmgc/.mim/configs/{p.relative_to(installed.src / "configs").as_posix()}'
        for p in (installed.src / 'configs').rglob('*')
        if p.is_file() and p.suffix in ('.py', '.yml')
    }
    assert len(configs) > 20 and 'mmgc/.mim/configs/mmdet/mask_rcnn_r50_fpn_gc.py' in configs
    assert configs == {n for n in names if n.startswith('mmgc/.mim/configs/')}
    assert not [n for n in names if n.startswith(('tests/', 'tools/', 'configs/', 'benchmarks/'))]
    assert not [n for n in names if '__pycache__' in n]
    (entry_points,) = [n for n in names if n.endswith('.dist-info/entry_points.txt')]
    text = zipfile.ZipFile(installed.wheel).read(entry_points).decode()
    for script in SCRIPTS:
        function = 'main_' + script.removeprefix('mmgc-').replace('-', '_')
        assert f'{script} = mmgc.runtime.entry_points:{function}' in text


# ---------------- import, the CPU kernel and SGDGC, configs inherited as mmgc::

#: A user's config -> the mmgc config it inherits (every shipped config is in a
#: folder: MMEngine 0.10 wants one after 'mmgc::').
_USER_CONFIGS = {
    'my_mask_rcnn_gc.py': 'mmgc::mmdet/mask_rcnn_r50_fpn_gc.py',
    'my_mask_rcnn.py': 'mmgc::mmdet/baselines/mask_rcnn_r50_fpn.py',
    'my_demo_gc.py': 'mmgc::demo/mask_rcnn_r18_fpn_shapes_gc.py',
    'my_adamw_gc.py': 'mmgc::adamw/mask_rcnn_r50_fpn_adamw_gc.py',
}
#: Configs of the other codebases, through ``mmgc::`` (MMPretrain's where it is installed).
_CODEBASE_CONFIGS = {
    'my_fcn.py': 'mmgc::mmseg/demo/fcn_r18_shapes.py',
    'my_pspnet_gc.py': 'mmgc::mmseg/pspnet_r50-d8_4xb2-80k_cityscapes-512x1024_gc.py',
}
if importlib.util.find_spec('mmpretrain') is not None:
    _CODEBASE_CONFIGS['my_cifar_gc.py'] = 'mmgc::mmpretrain/resnet18_cifar100_gc.py'

#: Run once with the virtualenv's Python (importing torch and MMDetection takes
#: most of its time): argv = steps file, then the user's configs.
_PROBE = r"""
import json, sys
import torch
import mmgc  # before the configs are loaded: it adds the mmgc:: scope
from mmengine.config import Config
from mmengine.config.utils import MODULE2PACKAGE
from mmengine.optim import build_optim_wrapper
from mmgc.ops import cpu_kernel

# SGDGC's default path on the CPU, first use: the kernel is compiled now
g = torch.Generator().manual_seed(0)
shapes = [(4, 3, 3, 3), (5, 6), (4,)]
params = [torch.nn.Parameter(torch.randn(s, generator=g)) for s in shapes]
initial = [p.detach().clone() for p in params]
grads = [[torch.randn(s, generator=g) for s in shapes] for _ in range(3)]
opt = mmgc.SGDGC(params, lr=0.05, momentum=0.9, weight_decay=1e-2)  # GC on ndim > 1
twins, buffers = [p.detach().clone() for p in initial[:2]], [None, None]
for step in grads:
    for p, grad in zip(params, step):
        p.grad = grad.clone()
    opt.step()
    cpu_kernel.fused_sgd_gc_cpu_(twins, step[:2], buffers, [0, 0], lr=0.05, momentum=0.9,
                                 dampening=0.0, weight_decay=1e-2, nesterov=False, maximize=False)
build = cpu_kernel.cpu_kernel_build()
torch.save(dict(initial=initial, grads=grads, final=[p.detach() for p in params]), sys.argv[1])
found = dict(
    mmgc=mmgc.__file__,
    source=str(cpu_kernel._SOURCE),
    library=str(build.path) if build.library is not None else None,
    error=build.error,
    compile_seconds=build.compile_seconds,
    kernel_result=all(torch.equal(t, p.detach()) for t, p in zip(twins, params)),
    sys_path=sys.path,
    finders=[type(f).__module__ for f in sys.meta_path],
    scope=MODULE2PACKAGE.get('mmgc'),
    configs={},
)
for name in sys.argv[2:]:
    cfg = Config.fromfile(name)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(), torch.nn.Linear(4, 2)
    )
    wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    gc = {id(p): g.get('gc') for g in wrapper.optimizer.param_groups for p in g['params']}
    found['configs'][name] = dict(
        optim_wrapper=cfg.optim_wrapper.to_dict(),
        model=cfg.model.type,
        depth=cfg.model.backbone.depth,
        text=cfg.text,
        optimizer=type(wrapper.optimizer).__module__ + '.' + type(wrapper.optimizer).__name__,
        gc=[gc[id(p)] for p in model.parameters()],
    )
print(json.dumps(found, default=str))
"""


@pytest.fixture(scope='module')
def probe(installed) -> SimpleNamespace:
    """What :data:`_PROBE` found in the virtualenv, and the SGDGC steps it saved."""
    configs = {**_USER_CONFIGS, **_CODEBASE_CONFIGS}
    for name, base in configs.items():
        (installed.user / name).write_text(f"_base_ = '{base}'\n")
    steps = installed.user / 'steps.pt'
    found = _last_json(_python(installed, _PROBE, steps, *configs))
    return SimpleNamespace(**found, steps=torch.load(steps))


def test_installed_mmgc_is_the_wheel_not_the_clone(installed, probe):
    assert Path(probe.mmgc).is_relative_to(installed.site)
    stack = [Path(p).resolve() for p in installed.stack]
    in_clone = [Path(p).resolve() for p in probe.sys_path if p]
    in_clone = [p for p in in_clone if p.is_relative_to(ROOT)]
    assert in_clone and all(any(p.is_relative_to(s) for s in stack) for p in in_clone)
    assert not [f for f in probe.finders if 'editable' in f]
    assert probe.scope == 'mmgc.mim'


def test_installed_mmgc_builds_its_kernel_and_steps_sgdgc(installed, probe):
    # compiled in that run, from the installed source, into the fresh cache
    assert probe.error is None and probe.library is not None
    assert Path(probe.source).is_relative_to(installed.site)
    assert Path(probe.library).parent == installed.cache
    assert probe.compile_seconds > 0
    assert probe.kernel_result is True  # SGDGC's default path ran that kernel
    saved = probe.steps
    ref = ReferenceSGDGC(saved['initial'], [0, 0, None], lr=0.05, momentum=0.9, weight_decay=1e-2)
    for step in saved['grads']:
        ref.step(step)
    for final, expected in zip(saved['final'], ref.weights):
        assert_close(final.double(), expected, rtol=1e-5, atol=1e-6)
    # each output unit's weight sum is unchanged (Eq. 3); the bias moved
    for w0, w1 in zip(saved['initial'][:2], saved['final'][:2]):
        assert_close(w1.flatten(1).sum(1), w0.flatten(1).sum(1), rtol=0, atol=1e-5)
    assert not torch.allclose(saved['initial'][2], saved['final'][2])


def test_user_config_in_another_folder_inherits_mmgc_configs(installed, probe):
    shipped = installed.site / 'mmgc' / '.mim' / 'configs'
    for name, base in _USER_CONFIGS.items():
        merged = probe.configs[name]
        # resolved in the installed package, its mmdet:: bases in MMDetection
        assert str(shipped) in merged['text'] and 'mmdet/.mim/configs/mask_rcnn' in merged['text']
        assert merged['model'] == 'MaskRCNN'
        # the same optimizer settings as the repository's config
        expected = Config.fromfile(ROOT / 'configs' / os.path.normpath(base.split('::')[1]))
        assert without_scope(merged['optim_wrapper']) == without_scope(
            json.loads(json.dumps(expected.optim_wrapper.to_dict(), default=str))
        )
    gc_r50 = probe.configs['my_mask_rcnn_gc.py']
    assert gc_r50['depth'] == 50
    optimizer = gc_r50['optim_wrapper']['optimizer']
    assert (optimizer['type'], optimizer['lr'], optimizer['momentum']) == ('SGDGC', 0.02, 0.9)
    assert optimizer['weight_decay'] == 1e-4
    assert gc_r50['optim_wrapper']['constructor'] == 'GCOptimWrapperConstructor'
    assert gc_r50['optim_wrapper']['gc']['layers'] == ['conv', 'fc']
    assert gc_r50['optimizer'] == 'mmgc.engine.optimizers.sgd_gc.SGDGC'
    # conv and FC weights get GC; the conv and FC biases and the norm's parameters do not
    assert gc_r50['gc'] == [True, False, False, False, True, False]
    baseline = probe.configs['my_mask_rcnn.py']
    assert baseline['optim_wrapper']['optimizer']['type'] == 'SGD'
    assert baseline['optimizer'] == 'torch.optim.sgd.SGD'
    demo = probe.configs['my_demo_gc.py']
    assert demo['optim_wrapper']['optimizer']['type'] == 'SGDGC' and demo['depth'] == 18
    adamw = probe.configs['my_adamw_gc.py']
    assert adamw['optim_wrapper']['optimizer']['type'] == 'AdamW'
    assert adamw['gc'][0] is True and adamw['gc'][4] is True


def test_user_configs_of_the_other_codebases_resolve_in_the_wheel(installed, probe):
    """``mmgc::mmseg/...`` and ``mmgc::mmpretrain/...`` resolve in the installed
    package, and their bases in MMSegmentation's and MMPretrain's own configs."""
    shipped = installed.site / 'mmgc' / '.mim' / 'configs'
    fcn = probe.configs['my_fcn.py']
    assert str(shipped / 'mmseg') in fcn['text'] and 'mmseg/.mim/configs/_base_' in fcn['text']
    assert fcn['model'] == 'EncoderDecoder' and fcn['depth'] == 18
    pspnet = probe.configs['my_pspnet_gc.py']  # a segmentation row: its twin is MMSegmentation's
    assert str(shipped / 'mmseg' / 'baselines') in pspnet['text']
    assert 'mmseg/.mim/configs/pspnet' in pspnet['text']
    assert pspnet['optim_wrapper']['optimizer']['type'] == 'SGDGC' and pspnet['depth'] == 50
    if 'my_cifar_gc.py' not in _CODEBASE_CONFIGS:
        return  # no MMPretrain on this stack (the newest: no torchvision loads beside it)
    cifar = probe.configs['my_cifar_gc.py']
    assert str(shipped / 'mmpretrain') in cifar['text']
    assert 'mmpretrain/.mim/configs/resnet' in cifar['text']
    assert cifar['model'] == 'ImageClassifier' and cifar['depth'] == 18
    assert cifar['optimizer'] == 'mmgc.engine.optimizers.sgd_gc.SGDGC'
    # conv layers only: the conv weight gets GC, the FC weight does not
    assert cifar['gc'] == [True, False, False, False, False, False]


# ------------------------------------------------------------ the entry points


def test_console_scripts_run_from_the_virtualenv(installed):
    for script in SCRIPTS:
        path = installed.bin / script
        assert path.read_text().splitlines()[0] == f'#!{installed.python}'
    train = ok(_script(installed, 'mmgc-train', '--help'))
    assert train.stdout.startswith('usage: mmgc-train [-h]')
    assert '--gc-diagnostics INTERVAL' in train.stdout and '--resume' in train.stdout


_TINY_USER_CONFIG = """
# A user's tiny GC run inheriting the demo's GC config from the installed mmgc.
_base_ = 'mmgc::demo/mask_rcnn_r18_fpn_shapes_gc.py'
model = dict(
    backbone=dict(base_channels=8),
    neck=dict(in_channels=[8, 16, 32, 64], out_channels=16),
    rpn_head=dict(in_channels=16, feat_channels=16),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=16),
        bbox_head=dict(in_channels=16, fc_out_channels=32),
        mask_roi_extractor=dict(out_channels=16),
        mask_head=dict(num_convs=1, in_channels=16, conv_out_channels=16),
    ),
)
train_dataloader = dict(batch_size=2)
train_cfg = dict(max_iters=2, val_interval=100)  # no validation: mmgc-test evaluates
param_scheduler = [dict(type='ConstantLR', factor=1.0, by_epoch=False, begin=0, end=2)]
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=2))
auto_scale_lr = dict(enable=False)
"""


def test_tiny_train_and_test_with_the_console_scripts(installed, tools):
    config = installed.user / 'my_tiny_gc.py'
    config.write_text(_TINY_USER_CONFIG)
    options = ['--work-dir', installed.user / 'work_dirs' / 'tiny', '--cfg-options']
    options += tools.data_options()
    work = installed.user / 'work_dirs' / 'tiny'
    train = ok(_script(installed, 'mmgc-train', config.name, *options))
    assert 'Failed to' not in train.stdout + train.stderr  # no scope MMEngine cannot resolve
    checkpoint = work / 'iter_2.pth'
    saved = torch.load(checkpoint, map_location='cpu', weights_only=False)
    groups = saved['optimizer']['param_groups']
    assert {g['gc'] for g in groups} == {True, False}  # from GCOptimWrapperConstructor
    test = ok(_script(installed, 'mmgc-test', config.name, checkpoint, *options))
    metrics = json.loads((work / 'test_metrics.json').read_text())
    assert 'coco/bbox_mAP' in json.dumps(metrics), test.stdout[-2000:]
