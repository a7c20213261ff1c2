"""One command that checks mmgc on this machine's GPU(s) and writes one
Markdown report (``tools/check_gpu.sh`` runs it; ``docs/gpu-check.md`` says
how to read it).

Usage::

    python benchmarks/gpu_check.py                    # CUDA, full sizes
    python benchmarks/gpu_check.py --device cpu       # the same sections, tiny, on the CPU

Sections, each PASS, FAIL or SKIPPED with its reason and numbers:

1. **tests**: the suite's tests marked ``cuda`` (``pytest -m cuda``); with
   ``--device cpu``, their CPU counterparts in the same files (``-m 'not cuda'``).
2. **distributed**: two processes (torchrun; NCCL on two GPUs, gloo on the
   CPU) train a small conv/deconv/FC net with SGDGC through MMEngine's
   ``OptimWrapper`` and DDP for a few steps; the ranks must agree with each
   other and with one process that sees both ranks' batches, and each output
   unit's weight sum must hold (Eq. 3). SKIPPED on a machine with one GPU.
3. **step benchmark**: ``benchmarks/bench_step.py`` on the device (its
   Markdown table, ratios to torch's fused SGD).
4. **end to end**: Mask R-CNN R50-FPN built from the repository's twin
   configs (``configs/mmdet/baselines/mask_rcnn_r50_fpn.py`` with SGD,
   ``configs/mmdet/mask_rcnn_r50_fpn_gc.py`` with SGDGC), ``init_cfg=None``,
   trained on random images with random boxes and masks made in memory; the
   two take turns, iterations timed after a warm-up with
   ``torch.cuda.synchronize()``; ms/iter of each and GC's overhead ratio.
   On the CPU: a ResNet-18 backbone, small images, a few iterations.

Every section runs in its own subprocess (a crash or hang fails that section
only) with the same code on both devices; only sizes differ. This file
imports nothing beyond the standard library and torch at the top, so it
starts, and reports what is missing, on a machine without the stack.
Exit status: 0 if no section failed, 1 if one did, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import math
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = ('tests', 'distributed', 'bench', 'e2e')
TITLES = {
    'tests': '1. CUDA tests',
    'distributed': '2. Two-process run',
    'bench': '3. Optimizer step benchmark (bench_step.py)',
    'e2e': '4. Mask R-CNN R50-FPN end to end',
}


class Sizes(NamedTuple):
    """How big one device's run is: the step benchmark's models, timed steps
    and warm-up steps; the end-to-end run's timed and warm-up steps, image
    (height, width), ResNet depth and RoIs sampled per image (None:
    MMDetection's)."""

    bench_models: list[str]
    bench_iters: int
    bench_warmup: int
    e2e_iters: int
    e2e_warmup: int
    e2e_image: tuple[int, int]
    e2e_depth: int
    e2e_rois: int | None


#: The sizes of each device's run.
SIZES = {
    'cuda': Sizes(['mask_rcnn_r50', 'mask_rcnn_x101_64x4d'], 30, 3, 30, 5, (800, 1333), 50, None),
    'cpu': Sizes(['mask_rcnn_r50'], 2, 1, 2, 1, (128, 160), 18, 16),
}
#: Seconds each section may take before it fails.
TIMEOUTS = dict(tests=300, distributed=240, bench=420, e2e=420)
PASS, FAIL, SKIPPED = 'PASS', 'FAIL', 'SKIPPED'


@dataclass
class Section:
    """One section of the report."""

    name: str
    status: str
    reason: str
    body: str = ''
    seconds: float = 0.0


# ---------------------------------------------------------------- subprocesses


def _env() -> dict[str, str]:
    """The sections' environment: the repository on ``PYTHONPATH``."""
    env = dict(os.environ)
    paths = [str(ROOT)] + ([env['PYTHONPATH']] if env.get('PYTHONPATH') else [])
    env['PYTHONPATH'] = os.pathsep.join(paths)
    env.setdefault('PYTHONUNBUFFERED', '1')
    return env


def run_logged(cmd: list[str], env: dict[str, str], timeout: float, log: Path) -> int | None:
    """Run ``cmd`` in the repository root, its output to ``log``; the exit
    status, or None if it ran past ``timeout`` seconds. It runs in a process
    group of its own, which is killed whole on a timeout (torchrun's workers
    with it)."""
    with open(log, 'w') as out:
        out.write('$ ' + ' '.join(cmd) + '\n')
        out.flush()
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return None


def _tail(log: Path, lines: int = 25) -> str:
    text = log.read_text(errors='replace').splitlines()[-lines:]
    return '```\n' + '\n'.join(text) + '\n```'


def _failed(name: str, code: int | None, log: Path, what: str) -> Section:
    why = f'did not finish in {TIMEOUTS[name]} s' if code is None else f'exit status {code}'
    return Section(
        name, FAIL, f'{what} {why}; log: {log}', f'Last lines of the log:\n\n{_tail(log)}'
    )


# ---------------------------------------------------------------- 1. tests


def cuda_test_files() -> list[str]:
    """The test files that mark tests ``cuda`` (by their text: collecting the
    whole suite would import all of it)."""
    files = []
    for path in sorted((ROOT / 'tests').rglob('test_*.py')):
        if re.search(r'mark\.cuda\b', path.read_text(errors='replace')):
            files.append(str(path.relative_to(ROOT)))
    return files


def parse_junit(path: Path) -> tuple[Counter, list[str], list[str]]:
    """Counts (passed, failed, errors, skipped), skip reasons and failures of
    a pytest ``--junitxml`` file."""
    counts: Counter = Counter()
    skips, failures = [], []
    for case in ET.parse(path).getroot().iter('testcase'):
        name = f'{case.get("classname")}::{case.get("name")}'
        for tag in ('failure', 'error', 'skipped'):
            found = case.find(tag)
            if found is not None:
                message = (found.get('message') or '').strip().splitlines()
                first = message[0] if message else ''
                if tag == 'skipped':
                    counts['skipped'] += 1
                    skips.append(first)
                else:
                    counts['failed' if tag == 'failure' else 'errors'] += 1
                    failures.append(f'{name}: {first[:300]}')
                break
        else:
            counts['passed'] += 1
    return counts, skips, failures


def tests_section(device: str, out_dir: Path, env: dict[str, str]) -> Section:
    files = cuda_test_files()
    if not files:
        return Section('tests', FAIL, 'no test file under tests/ marks a test cuda')
    marker = 'cuda' if device == 'cuda' else 'not cuda'
    junit, log = out_dir / 'tests.xml', out_dir / 'tests.log'
    cmd = [sys.executable, '-m', 'pytest', *files, '-m', marker, '-q', '-rs']
    cmd += ['-p', 'no:cacheprovider', f'--junitxml={junit}']
    code = run_logged(cmd, env, TIMEOUTS['tests'], log)
    if code is None or not junit.is_file():
        return _failed('tests', code, log, 'pytest')
    counts, skips, failures = parse_junit(junit)
    summary = ', '.join(f'{counts[k]} {k}' for k in ('passed', 'failed', 'errors', 'skipped'))
    which = (
        f'`pytest -m cuda` over {", ".join(files)}'
        if device == 'cuda'
        else f"the CPU counterparts (`-m 'not cuda'`) in {', '.join(files)}; the "
        f'cuda tests themselves need a GPU'
    )
    body = [f'Ran {which}.']
    if skips:
        body.append('Skipped, by reason:\n')
        body += [f'- {n} x {reason}' for reason, n in Counter(skips).most_common()]
    if failures:
        body.append('\nFailed:\n')
        body += [f'- {f}' for f in failures]
        body.append(f'\n{_tail(log)}')
    ok = code == 0 and counts['passed'] > 0 and not failures
    if ok:
        reason = f'{summary} ({"cuda" if device == "cuda" else "CPU counterparts"})'
    elif code == 0:
        reason = f'{summary}: no test ran'
    else:
        reason = f'{summary} (pytest exit status {code}); log: {log}'
    return Section('tests', PASS if ok else FAIL, reason, '\n'.join(body))


# ---------------------------------------------------------------- 2. distributed

DIST_STEPS = 4
DIST_RANKS = 2


def _small_net() -> torch.nn.Module:
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3),
        nn.ReLU(),
        nn.ConvTranspose2d(8, 4, 2, stride=2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 8 * 8, 5),
    )


def _weight_sums(net: torch.nn.Module) -> list[torch.Tensor]:
    """Each output unit's weight sum: conv and FC along dim 0, deconv dim 1."""
    conv, deconv, fc = net[0].weight, net[2].weight, net[5].weight
    return [
        conv.detach().double().sum(dim=(1, 2, 3)).cpu(),
        deconv.detach().double().sum(dim=(0, 2, 3)).cpu(),
        fc.detach().double().sum(dim=1).cpu(),
    ]


def _dist_batch(step: int, ranks: list[int], device: torch.device):
    xs, ys = [], []
    for rank in ranks:
        gen = torch.Generator().manual_seed(1000 * step + rank)
        xs.append(torch.randn(4, 3, 6, 6, generator=gen))
        ys.append(torch.randn(4, 5, generator=gen))
    return torch.cat(xs).to(device), torch.cat(ys).to(device)


def _train_small_net(device: torch.device, ranks: list[int], ddp: bool) -> dict:
    """Train :func:`_small_net` with SGDGC for ``DIST_STEPS`` steps on the
    batches of ``ranks``, in DDP if ``ddp``; its weights and how far they and
    the output units' weight sums moved."""
    from mmengine.optim import build_optim_wrapper
    from torch.nn.parallel import DistributedDataParallel

    import mmgc  # noqa: F401  (registers SGDGC)

    net = _small_net().to(device)
    model = net
    if ddp:
        ids = [device.index] if device.type == 'cuda' else None
        model = DistributedDataParallel(net, device_ids=ids)
    wrapper = build_optim_wrapper(
        net,
        dict(
            type='OptimWrapper',
            optimizer=dict(type='SGDGC', lr=0.1, momentum=0.9, weight_decay=1e-2),
            constructor='GCOptimWrapperConstructor',
            gc=dict(layers=('conv', 'fc')),
        ),
    )
    sums = _weight_sums(net)
    start = [p.detach().clone() for p in net.parameters()]
    for step in range(DIST_STEPS):
        x, y = _dist_batch(step, ranks, device)
        wrapper.update_params(torch.nn.functional.mse_loss(model(x), y))
    params = [p.detach() for p in net.parameters()]
    return dict(
        params=params,
        drift=max(float((a - b).abs().max()) for a, b in zip(_weight_sums(net), sums)),
        moved=min(float((p - p0).abs().max()) for p, p0 in zip(params, start)),
    )


def dist_worker(args: argparse.Namespace) -> None:
    """One torchrun process: DDP + SGDGC on its rank's batches; then rank 0
    trains the same net alone on every rank's batches, and saves both."""
    import datetime as dt

    import torch.distributed as dist

    rank, world = int(os.environ['RANK']), int(os.environ['WORLD_SIZE'])
    if args.device == 'cuda':
        device = torch.device('cuda', int(os.environ['LOCAL_RANK']))
        torch.cuda.set_device(device)
        # float32 convolutions, not TF32 (cuDNN's default): 4 and 8 samples per
        # batch must round alike to within float32, not TF32's 1e-3
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    else:
        device = torch.device('cpu')
    dist.init_process_group(args.backend, timeout=dt.timedelta(seconds=120))
    two = _train_small_net(device, [rank], ddp=True)
    flat = torch.cat([p.flatten() for p in two['params']])
    gathered = [torch.empty_like(flat) for _ in range(world)]
    dist.all_gather(gathered, flat)
    two['rank_diff'] = max(float((g - gathered[0]).abs().max()) for g in gathered)
    two['backend'] = dist.get_backend()
    if rank == 0:
        one = _train_small_net(device, list(range(world)), ddp=False)
        for result in (two, one):
            result['params'] = [p.cpu() for p in result['params']]
        torch.save({'two': two, 'one': one}, args.out)


def distributed_section(device: str, out_dir: Path, env: dict[str, str]) -> Section:
    if device == 'cuda':
        count = torch.cuda.device_count()
        if count < 2:
            names = ', '.join(torch.cuda.get_device_name(i) for i in range(count))
            return Section(
                'distributed',
                SKIPPED,
                f'this machine has {count} CUDA device ({names}); a 2-process NCCL run needs 2',
            )
        if not torch.distributed.is_nccl_available():
            return Section('distributed', FAIL, f'torch {torch.__version__} was built without NCCL')
        backend = 'nccl'
    else:
        backend = 'gloo'
    out, log = out_dir / 'dist.pt', out_dir / 'dist.log'
    # --standalone: torchrun binds a free port itself (a port picked here and
    # passed on could be taken by another process before torchrun binds it)
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone']
    cmd += [f'--nproc_per_node={DIST_RANKS}', __file__, 'dist-worker']
    cmd += ['--device', device, '--backend', backend, '--out', str(out)]
    code = run_logged(cmd, env, TIMEOUTS['distributed'], log)
    if code != 0 or not out.is_file():
        return _failed('distributed', code, log, f'torchrun with {DIST_RANKS} processes')
    results = torch.load(out, map_location='cpu', weights_only=True)
    two, one = results['two'], results['one']
    vs_one = max(float((a - b).abs().max()) for a, b in zip(two['params'], one['params']))
    scale = max(float(p.abs().max()) for p in one['params'])
    vs = f'DDP vs 1 process on both batches: max abs diff (weights up to {scale:.2f})'
    checks = [
        ('ranks agree: max abs diff of any weight to rank 0', two['rank_diff'], '<=', 1e-6),
        (vs, vs_one, '<=', 1e-5),
        ('Eq. 3: max drift of an output unit weight sum (DDP)', two['drift'], '<=', 1e-5),
        ('Eq. 3: max drift of an output unit weight sum (1 process)', one['drift'], '<=', 1e-5),
        ('every tensor moved: min over tensors of max abs change', two['moved'], '>=', 1e-3),
    ]
    ok = {
        what: value <= limit if op == '<=' else value >= limit for what, value, op, limit in checks
    }
    rows = ['| check | value | limit | |', '|---|---:|---:|---|']
    rows += [
        f'| {what} | {value:.3g} | {op} {limit:g} | {"ok" if ok[what] else "**FAIL**"} |'
        for what, value, op, limit in checks
    ]
    bad = [what for what in ok if not ok[what]]
    body = (
        f'torchrun, {DIST_RANKS} processes ({backend}, {device}), each on its own batch: a '
        f'conv/transposed-conv/FC net in DDP, SGDGC (momentum 0.9, weight decay 1e-2) '
        f"built by GCOptimWrapperConstructor in MMEngine's OptimWrapper, {DIST_STEPS} "
        f'steps; then rank 0 trains the same net alone, without DDP, on both batches.'
        f'\n\n' + '\n'.join(rows)
    )
    if bad:
        return Section('distributed', FAIL, 'over the limit: ' + '; '.join(bad), body)
    reason = (
        f'{DIST_RANKS} {backend} processes agree (max diff {two["rank_diff"]:.2g}) and equal '
        f'1 process (max diff {vs_one:.2g}); weight sums hold (drift {two["drift"]:.2g})'
    )
    return Section('distributed', PASS, reason, body)


# ---------------------------------------------------------------- 3. bench_step


def table_ratios(text: str, variant: str) -> dict[str, str]:
    """``{model: ratio}`` of the first row starting with ``variant`` in
    bench_step.py's Markdown table (columns ``MODEL: ms | ratio | ...``)."""
    rows = [line.strip().strip('|') for line in text.splitlines() if line.startswith('|')]
    if len(rows) < 3:
        return {}
    header = [cell.strip() for cell in rows[0].split('|')]
    for row in rows[2:]:
        cells = [cell.strip() for cell in row.split('|')]
        if cells[0].startswith(variant) and len(cells) == len(header):
            return {
                header[i - 1].split(':')[0]: cells[i]
                for i in range(1, len(header))
                if header[i] == 'ratio'
            }
    return {}


def bench_section(device: str, out_dir: Path, env: dict[str, str], sizes: Sizes) -> Section:
    bench_dir, log = out_dir / 'bench', out_dir / 'bench.log'
    cmd = [sys.executable, str(ROOT / 'benchmarks' / 'bench_step.py'), '--device', device]
    cmd += ['--models', *sizes.bench_models, '--iters', str(sizes.bench_iters)]
    cmd += ['--warmup', str(sizes.bench_warmup), '--out-dir', str(bench_dir)]
    code = run_logged(cmd, env, TIMEOUTS['bench'], log)
    table = bench_dir / f'step_{device}.md'
    if code != 0 or not table.is_file():
        return _failed('bench', code, log, 'bench_step.py')
    text = table.read_text()
    ratios = table_ratios(text, 'SGDGC default')
    summary = ', '.join(f'{model} {ratio}' for model, ratio in ratios.items())
    reason = (
        f'{", ".join(sizes.bench_models)}, {sizes.bench_iters} steps; SGDGC default / '
        f'torch SGD without GC: {summary or "see the table"}'
    )
    note = (
        ''
        if device == 'cuda'
        else f'\n\nCPU stand-in: {sizes.bench_iters} timed steps, too few for stable '
        f'numbers; they show that the section runs.'
    )
    return Section('bench', PASS, reason, text.replace('## ', '#### ', 1) + note)


# ---------------------------------------------------------------- 4. end to end

E2E_CONFIGS = {
    'SGD (configs/mmdet/baselines/mask_rcnn_r50_fpn.py)': (
        'configs/mmdet/baselines/mask_rcnn_r50_fpn.py'
    ),
    'SGDGC (configs/mmdet/mask_rcnn_r50_fpn_gc.py)': 'configs/mmdet/mask_rcnn_r50_fpn_gc.py',
}


def random_batch(batch_size: int, height: int, width: int, gen: torch.Generator) -> dict:
    """What a Mask R-CNN train dataloader yields for ``batch_size`` random
    images (uint8, CHW) with 3 to 8 random boxes each, their masks filled
    ellipses inside the boxes, random labels of COCO's 80 classes."""
    import numpy as np
    from mmdet.structures import DetDataSample
    from mmdet.structures.mask import BitmapMasks
    from mmengine.structures import InstanceData

    inputs, samples = [], []
    ys, xs = np.mgrid[0:height, 0:width]
    for i in range(batch_size):
        inputs.append(torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=gen))
        n = int(torch.randint(3, 9, (1,), generator=gen))
        size = torch.rand(n, 2, generator=gen) * 0.4 + 0.1  # 10% to 50% of the image
        corner = torch.rand(n, 2, generator=gen) * (1 - size)
        boxes = torch.cat([corner, corner + size], dim=1) * torch.tensor(
            [width, height, width, height]
        )
        masks = np.zeros((n, height, width), dtype=np.uint8)
        for j, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
            cx, cy, rx, ry = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / 2, (y2 - y1) / 2
            masks[j] = ((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2 <= 1
        sample = DetDataSample(
            metainfo=dict(
                img_id=i,
                img_shape=(height, width),
                ori_shape=(height, width),
                pad_shape=(height, width),
                scale_factor=(1.0, 1.0),
                flip=False,
            )
        )
        sample.gt_instances = InstanceData(
            bboxes=boxes,
            labels=torch.randint(0, 80, (n,), generator=gen),
            masks=BitmapMasks(masks, height, width),
        )
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


def _e2e_models(device: torch.device, depth: int, rois: int | None = None):
    """The twin configs' models (identical initial weights, ``init_cfg=None``)
    and optim wrappers, and the configs' batch size. The CPU stand-in
    (``depth`` 18 or 34, ``rois``) shrinks the backbone and the RoIs the
    heads train on (``rois`` sampled per image, at most 4 ``rois`` proposals),
    which leaves every optimizer tensor but the backbone's as it is."""
    from mmdet.registry import MODELS
    from mmengine.config import Config
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import init_default_scope

    import mmgc  # noqa: F401

    init_default_scope('mmdet')
    built, state, batch_size = {}, None, None
    for name, path in E2E_CONFIGS.items():
        cfg = Config.fromfile(str(ROOT / path))
        cfg.model.backbone.init_cfg = None
        if depth != 50:  # the CPU stand-in: a ResNet-18/34 backbone
            cfg.model.backbone.depth = depth
            cfg.model.neck.in_channels = [64, 128, 256, 512]
        if rois:
            cfg.model.train_cfg.rcnn.sampler.num = rois
            cfg.model.train_cfg.rpn_proposal.max_per_img = 4 * rois
        torch.manual_seed(0)
        model = MODELS.build(cfg.model)
        if state is None:
            model.init_weights()
            state = model.state_dict()
        model.load_state_dict(state)
        model.to(device).train()
        wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
        built[name] = (model, wrapper, type(wrapper.optimizer).__name__)
        batch_size = cfg.train_dataloader.batch_size
    return built, batch_size


def e2e_worker(args: argparse.Namespace) -> None:
    """Time the twins on random batches; write the medians as JSON."""
    import copy

    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == 'cuda' else (lambda: None)
    height, width = args.image_size
    built, config_batch = _e2e_models(device, args.depth, args.rois)
    batch_size = args.batch_size or config_batch
    gen = torch.Generator().manual_seed(0)
    batches = [random_batch(batch_size, height, width, gen) for _ in range(min(4, args.iters))]
    names = list(built)
    times: dict[str, list[float]] = {n: [] for n in names}
    step_times: dict[str, list[float]] = {n: [] for n in names}
    for name in names:  # optimizer step time: synchronized step hooks
        optimizer, marks = built[name][1].optimizer, step_times[name]

        def pre(*_, marks=marks):
            sync()
            marks.append(time.perf_counter())

        def post(*_, marks=marks):
            sync()
            marks[-1] = (time.perf_counter() - marks[-1]) * 1e3

        optimizer.register_step_pre_hook(pre)
        optimizer.register_step_post_hook(post)
    losses: dict[str, float] = {}
    first: dict[str, float] = {}
    for it in range(args.warmup + args.iters):
        batch = batches[it % len(batches)]
        for name in names[it % 2 :] + names[: it % 2]:  # take turns: the same load for both
            model, wrapper, _ = built[name]
            data = copy.deepcopy(batch)
            if it == 0:  # the same weights, batch and sampling: the same first loss
                torch.manual_seed(1)
            sync()
            t0 = time.perf_counter()
            log_vars = model.train_step(data, optim_wrapper=wrapper)
            sync()
            if it >= args.warmup:
                times[name].append((time.perf_counter() - t0) * 1e3)
            losses[name] = float(log_vars['loss'])
            first.setdefault(name, losses[name])
    result = dict(
        device=(
            torch.cuda.get_device_name(device)
            if device.type == 'cuda'
            else f'the CPU ({torch.get_num_threads()} torch threads)'
        ),
        batch_size=batch_size,
        image_size=[height, width],
        depth=args.depth,
        rois=args.rois,
        iters=args.iters,
        warmup=args.warmup,
        threads=torch.get_num_threads(),
        variants={
            name: dict(
                optimizer=built[name][2],
                iter_ms=statistics.median(times[name]),
                step_ms=statistics.median(step_times[name][args.warmup :]),
                first_loss=first[name],
                last_loss=losses[name],
                max_memory_mb=(
                    torch.cuda.max_memory_allocated(device) / 2**20
                    if device.type == 'cuda'
                    else None
                ),
            )
            for name in names
        },
    )
    Path(args.out).write_text(json.dumps(result, indent=1))


def e2e_section(device: str, out_dir: Path, env: dict[str, str], sizes: Sizes) -> Section:
    out, log = out_dir / 'e2e.json', out_dir / 'e2e.log'
    height, width = sizes.e2e_image
    cmd = [sys.executable, __file__, 'e2e-worker', '--device', device, '--out', str(out)]
    cmd += ['--iters', str(sizes.e2e_iters), '--warmup', str(sizes.e2e_warmup)]
    cmd += ['--image-size', str(height), str(width), '--depth', str(sizes.e2e_depth)]
    if sizes.e2e_rois:
        cmd += ['--rois', str(sizes.e2e_rois)]
    code = run_logged(cmd, env, TIMEOUTS['e2e'], log)
    if code != 0 or not out.is_file():
        return _failed('e2e', code, log, 'the end-to-end run')
    r = json.loads(out.read_text())
    (base_name, base), (gc_name, gc) = r['variants'].items()
    if gc['optimizer'] != 'SGDGC' or base['optimizer'] != 'SGD':
        built = f'{base["optimizer"]} and {gc["optimizer"]}'
        return Section('e2e', FAIL, f'the twin configs built {built}, not SGD and SGDGC')
    losses = {name: (v['first_loss'], v['last_loss']) for name, v in r['variants'].items()}
    if not all(math.isfinite(loss) for pair in losses.values() for loss in pair):
        return Section('e2e', FAIL, f'a loss is not finite: {losses}; log: {log}')
    first_diff = abs(gc['first_loss'] - base['first_loss']) / abs(base['first_loss'])
    if first_diff > 1e-3:
        return Section(
            'e2e',
            FAIL,
            f'the twins differ before the first step: first losses {base["first_loss"]:.6g} '
            f'(SGD) and {gc["first_loss"]:.6g} (SGDGC), relative difference {first_diff:.2g}',
        )
    ratio = gc['iter_ms'] / base['iter_ms']
    step_share = (gc['step_ms'] - base['step_ms']) / base['iter_ms'] * 100
    rows = ['| variant | ms / iteration | optimizer step ms | first loss | last loss |']
    rows.append('|---|---:|---:|---:|---:|')
    for name, v in r['variants'].items():
        times = f'{v["iter_ms"]:.1f} | {v["step_ms"]:.2f}'
        rows.append(f'| {name} | {times} | {v["first_loss"]:.4f} | {v["last_loss"]:.4f} |')
    if r['depth'] == 50:
        backbone = 'R50-FPN'
    else:
        backbone = f'R{r["depth"]}-FPN (the CPU stand-in for R50-FPN)'
    heads = (
        f'; the heads train on {r["rois"]} sampled RoIs per image (CPU stand-in)'
        if r['rois']
        else ''
    )
    body = (
        f'Mask R-CNN {backbone} from the twin configs, `init_cfg=None`, on {r["device"]}; '
        f'batch {r["batch_size"]} random {r["image_size"][0]}x{r["image_size"][1]} images '
        f'with random boxes and masks{heads}; medians of {r["iters"]} iterations after '
        f'{r["warmup"]} warm-up ones, the twins taking turns; each iteration is '
        f'`model.train_step` (forward, backward, optimizer step) between two '
        f'`torch.cuda.synchronize()`s (on the CPU, the wall clock). Each twin runs its '
        f"config as written: the baseline torch's SGD with torch's default kernel, SGDGC "
        f'its default path. Before the first step both see the same weights, batch and '
        f'random sampling, so their first losses must agree (relative difference '
        f'{first_diff:.2g}, limit 1e-3).\n\n' + '\n'.join(rows)
    )
    body += (
        f'\n\nEnd-to-end overhead of GC: {ratio:.3f}x ({(ratio - 1) * 100:+.2f}%) by '
        f'iteration medians; by optimizer-step medians over the SGD iteration: '
        f'{step_share:+.2f}%.'
    )
    if r['variants'][base_name]['max_memory_mb'] is not None:
        body += f' Peak CUDA memory (both models): {gc["max_memory_mb"]:.0f} MB.'
    else:
        body += (
            f'\n\nCPU stand-in: {r["iters"]} timed iterations of a smaller model, too few '
            f'for stable numbers; they show that the section runs.'
        )
    reason = (
        f'SGD {base["iter_ms"]:.1f} ms/iter, SGDGC {gc["iter_ms"]:.1f} ms/iter: overhead '
        f'{ratio:.3f}x ({backbone.split()[0]}, {r["image_size"][0]}x{r["image_size"][1]}, '
        f'batch {r["batch_size"]}, {r["iters"]} iterations)'
    )
    return Section('e2e', PASS, reason, body)


# ---------------------------------------------------------------- report


def _version(dist: str) -> str:
    for name in (dist, f'onedl-{dist}'):
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return 'not installed'


def _mmcv_ops() -> str:
    """Whether MMCV's compiled ops are there (looked up, not imported)."""
    try:
        from mmgc._compat import mmcv_ops_found

        found = mmcv_ops_found()
    except Exception as err:  # finding it imports mmcv, which may fail
        return f'unknown ({type(err).__name__}: {err})'
    return 'found' if found else 'missing'


def machine_lines(device: str) -> list[str]:
    """What the report says about the machine and the stack."""
    lines = [f'- host: {platform.node()}, {platform.machine()}, {os.cpu_count()} CPUs']
    if device == 'cuda':
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        counts = ', '.join(f'{n} x {name}' for name, n in Counter(names).items())
        try:  # a tuple in recent torch; never fail the report over it
            nccl = torch.cuda.nccl.version()
            nccl = '.'.join(map(str, nccl)) if isinstance(nccl, tuple) else str(nccl)
        except Exception as err:
            nccl = f'unknown ({type(err).__name__})'
        lines.append(f'- GPUs: {counts}; CUDA {torch.version.cuda}, NCCL {nccl}')
    versions = ', '.join(
        f'{name} {_version(name)}' for name in ('mmengine', 'mmcv', 'mmdet', 'numpy', 'setuptools')
    )
    lines.append(f'- Python {platform.python_version()}, torch {torch.__version__}, {versions}')
    lines.append(f'- MMCV compiled ops (needed by sections 3 and 4): {_mmcv_ops()}')
    try:
        commit = subprocess.run(
            ['git', 'rev-parse', '--short', 'HEAD'], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ['git', 'status', '--porcelain', '--untracked-files=no'],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
        if commit:
            lines.append(f'- mmgc at {commit}{" (with uncommitted changes)" if dirty else ""}')
    except OSError:
        pass
    return lines


def render(sections: list[Section], device: str, seconds: float, argv: list[str]) -> str:
    """The report: a summary table, then each section."""
    failed = [s for s in sections if s.status == FAIL]
    verdict = f'FAIL ({len(failed)} of {len(sections)} sections)' if failed else 'PASS'
    when = datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')
    out = [f'# mmgc GPU check ({device}): {verdict}', '']
    out += [f'- {when}; `{" ".join(argv)}`; {seconds:.0f} s in all', *machine_lines(device), '']
    out += ['| section | status | reason | seconds |', '|---|---|---|---:|']
    for s in sections:
        reason = s.reason.replace('|', '\\|')
        out.append(f'| {TITLES[s.name]} | {s.status} | {reason} | {s.seconds:.0f} |')
    for s in sections:
        out += ['', f'## {TITLES[s.name]}: {s.status}', '', s.reason + '.']
        if s.body:
            out += ['', s.body]
    return '\n'.join(out) + '\n'


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    sub = parser.add_subparsers(dest='worker')
    dist = sub.add_parser('dist-worker', help='(internal) one torchrun process of section 2')
    dist.add_argument('--device', required=True, choices=('cuda', 'cpu'))
    dist.add_argument('--backend', required=True)
    dist.add_argument('--out', required=True)
    e2e = sub.add_parser('e2e-worker', help='(internal) the run of section 4')
    e2e.add_argument('--device', required=True, choices=('cuda', 'cpu'))
    e2e.add_argument('--out', required=True)
    e2e.add_argument('--iters', type=int, required=True)
    e2e.add_argument('--warmup', type=int, required=True)
    e2e.add_argument('--image-size', type=int, nargs=2, required=True, metavar=('H', 'W'))
    e2e.add_argument('--depth', type=int, default=50, choices=(18, 34, 50))
    e2e.add_argument('--batch-size', type=int, default=None)
    e2e.add_argument('--rois', type=int, default=None, help='RoIs sampled per image')
    parser.add_argument(
        '--device',
        choices=('cuda', 'cpu'),
        default='cuda',
        help="cuda (default): full sizes on this machine's GPUs; cpu: the tiny CPU stand-in",
    )
    parser.add_argument(
        '--sections', nargs='+', choices=SECTIONS, default=list(SECTIONS), help='default: all'
    )
    parser.add_argument(
        '--out-dir',
        default=None,
        help='where the report and logs go (default: work_dirs/check_gpu/<device>-<time>)',
    )
    parser.add_argument(
        '--bench-models',
        nargs='+',
        default=None,
        help='bench_step.py --models (default: mask_rcnn_r50 mask_rcnn_x101_64x4d on cuda, '
        'mask_rcnn_r50 on cpu)',
    )
    parser.add_argument('--e2e-iters', type=int, default=None, help='timed iterations of section 4')
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.worker == 'dist-worker':
        # a process that starts a group ends it, however the worker ends
        from mmgc.runtime.distributed import ends_process_group

        return ends_process_group(dist_worker)(args) or 0
    if args.worker == 'e2e-worker':
        e2e_worker(args)
        return 0
    if args.device == 'cuda' and not torch.cuda.is_available():
        print(
            f'check_gpu: --device cuda, but torch {torch.__version__} sees no CUDA GPU; '
            f'run with --device cpu for the CPU stand-in',
            file=sys.stderr,
        )
        return 2
    if args.e2e_iters is not None and args.e2e_iters < 1:
        print(f'check_gpu: --e2e-iters must be >= 1; got {args.e2e_iters}', file=sys.stderr)
        return 2
    sizes = SIZES[args.device]
    if args.bench_models:
        sizes = sizes._replace(bench_models=args.bench_models)
    if args.e2e_iters:
        sizes = sizes._replace(e2e_iters=args.e2e_iters)
    stamp = datetime.datetime.now().strftime('%Y%m%d-%H%M%S')
    out_dir = Path(args.out_dir or ROOT / 'work_dirs' / 'check_gpu' / f'{args.device}-{stamp}')
    out_dir = out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    env = _env()
    start = time.perf_counter()
    sections = []
    for name in args.sections:
        print(f'check_gpu: {TITLES[name]} ...', flush=True)
        t0 = time.perf_counter()
        if name == 'tests':
            section = tests_section(args.device, out_dir, env)
        elif name == 'distributed':
            section = distributed_section(args.device, out_dir, env)
        elif name == 'bench':
            section = bench_section(args.device, out_dir, env, sizes)
        else:
            section = e2e_section(args.device, out_dir, env, sizes)
        section.seconds = time.perf_counter() - t0
        print(f'check_gpu: {TITLES[name]}: {section.status}: {section.reason}', flush=True)
        sections.append(section)
    report = out_dir / 'report.md'
    report.write_text(render(sections, args.device, time.perf_counter() - start, argv))
    failed = [s for s in sections if s.status == FAIL]
    print(f'check_gpu: {"FAIL" if failed else "PASS"}; report: {report}')
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
