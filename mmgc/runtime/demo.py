"""The demo: the shapes data, then ``tools/train_pair.sh`` on the demo's twins
(each seed's pair side by side, finished runs reused, killed ones resumed, every
run tested by ``tools/test.py`` and compared by ``tools/compare_ap.py`` into the
report folder), then the report: the comparison's Markdown plus the loss plot and
timings, read from the logs MMEngine wrote (:mod:`mmgc.runtime.logs`)."""

from __future__ import annotations

import csv
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np
from mmengine.config import Config
from mmengine.logging import print_log

from . import logs
from .shapes import make_shapes_dataset

__all__ = ['ap_figure', 'demo_options', 'loss_figure', 'run_demo', 'write_report']

PathLike = Union[str, os.PathLike]
RUNNER = Path(__file__).resolve().parents[2] / 'tools' / 'train_pair.sh'  # in a checkout
_LR_STEPS = (8 / 12, 11 / 12)  # the 1x schedule's lr steps, as fractions of the run
_CHECKPOINT = 'default_hooks.checkpoint.interval'
_SMOOTH = 20  # iterations in the moving average of the loss plot
_SIDES = {'baseline': ('tab:blue', 'baseline (SGD)'), 'gc': ('tab:red', 'GC (SGDGC)')}
# MMEngine logs every iteration's own loss and time; validation would only repeat the test.
_FIXED = ['default_hooks.logger.interval=1', 'log_processor.window_size=1']
_FIXED += [f'val_{key}=None' for key in ('dataloader', 'cfg', 'evaluator')]


def demo_options(config: PathLike, *, data_root: PathLike, iters: int | None = None) -> list[str]:
    """The ``--cfg-options`` (``K=V``) that make a demo config one run of the demo:
    the data folder, the schedule scaled to ``iters`` (warm-up, lr steps and the
    checkpoint follow), a log record every iteration, no validation (the test's twin).

    Args:
        config (str | os.PathLike): A demo config.
        data_root (str | os.PathLike): A folder made by ``make_shapes_dataset``.
        iters (int, optional): Training iterations. Defaults to the config's.

    Raises:
        ValueError: If ``iters`` is not an int >= 1.
    """
    if iters is not None and (isinstance(iters, bool) or not isinstance(iters, int) or iters < 1):
        raise ValueError(f'iters must be an int >= 1; got {iters!r}')
    cfg = Config.fromfile(str(config))
    root = str(data_root).rstrip('/\\') + '/'
    options = [f'{split}_dataloader.dataset.data_root={root}' for split in ('train', 'test')]
    options.append(f'test_evaluator.ann_file={root}{cfg.test_dataloader.dataset.ann_file}')
    if iters is not None:
        steps = ','.join(str(max(1, int(iters * f))) for f in _LR_STEPS)  # floor: iters > 0
        ends = f'param_scheduler.0.end={min(int(cfg.warmup_iters), iters)}'
        options += [ends, f'param_scheduler.1.end={iters}']
        options.append(f'param_scheduler.1.milestones=[{steps}]')
        options += [f'{key}={iters}' for key in ('train_cfg.max_iters', _CHECKPOINT)]
    return options + _FIXED


def run_demo(
    gc_config: PathLike,
    baseline_config: PathLike,
    *,
    seeds: Sequence[int] = (0,),
    data_root: PathLike = 'data/shapes',
    work_dir: PathLike = 'work_dirs/demo',
    report_dir: PathLike = 'reports/demo',
    iters: int | None = None,
    data_seed: int = 0,
    num_train: int = 800,
    num_val: int = 50,
    command: str | None = None,
    parallel: bool = True,
    threads: int | None = None,
    runner: PathLike = RUNNER,
) -> dict[str, Any]:
    """Make the data; run ``runner`` (``tools/train_pair.sh``) on the twins, one
    process per run with ``threads`` torch threads (default: the CPU count, halved
    when ``parallel``: a pair side by side, else one run after the other), runs in
    ``work_dir/seed<S>/{gc,baseline}``, the comparison into ``report_dir`` (data
    made anew, or runs of the earlier demo there: every run trained again); then
    :func:`write_report`.

    ``iters`` defaults to the configs'; ``data_seed``, ``num_train`` and ``num_val``
    make the data; ``command`` is quoted in the report.

    Returns:
        dict: :func:`write_report`'s.

    Raises:
        ValueError: If ``seeds`` is empty, repeats a seed or holds one < 0.
        RuntimeError: If the pair runner fails (its output names the run).
    """
    seeds = list(seeds)
    if not seeds:
        raise ValueError('seeds must name at least one training seed; got none')
    for seed in seeds:
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f'seeds must be ints >= 0; got {seed!r}')
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise ValueError(f'seeds must differ; {repeated} given more than once')
    options = demo_options(gc_config, data_root=Path(data_root).resolve(), iters=iters)
    start = time.perf_counter()
    print_log('[demo] 1/3 dataset', logger='current')
    data = make_shapes_dataset(data_root, num_train=num_train, num_val=num_val, seed=data_seed)
    threads = threads or max(1, (os.cpu_count() or 1) // (2 if parallel else 1))
    work, out = Path(work_dir).resolve(), Path(report_dir).resolve()
    cmd = ['bash', str(runner), str(gc_config), '1', '--base-config', str(baseline_config)]
    cmd += ['--seeds', *map(str, seeds), '--work-dir', str(work), '--out-dir', str(out)]
    cmd += ['--threads', str(threads), '--side-by-side' if parallel else '--console-log']
    old = any(work.glob('seed*/*/demo_run.json'))  # runs of the demo before train_pair.sh
    cmd += [*['--retrain'] * (data['generated'] or old), '--cfg-options', *options]
    print_log(f'[demo] 2/3 the pairs: {shlex.join(cmd)}', logger='current')
    code = subprocess.run(cmd, env={**os.environ, 'PYTHON': sys.executable}).returncode
    if code:
        raise RuntimeError(f'tools/train_pair.sh failed (exit status {code}); see its output')
    print_log('[demo] 3/3 report', logger='current')
    data = dict(data_root=data['data_root'], num_train=num_train, num_val=num_val)  # as made
    info = dict(seeds=seeds, data_seed=data_seed, threads=threads, data=data)
    runs = [_run(work / f'seed{s}' / name, name, s, info) for s in seeds for name in _SIDES]
    info['wall_s'] = round(time.perf_counter() - start, 1)
    report = write_report(runs, out, info, command)
    print_log(f'[demo] report written to {report["report"]}', logger='current')
    return report


def _run(work_dir: Path, name: str, seed: int, info: dict) -> dict[str, Any]:
    """A tested run, from its files: ``metrics`` (test_metrics.json's: fractions, -1
    where COCOeval has no data), ``losses`` (``(iteration, total loss)``), ``train_s``
    (the sum of MMEngine's per-iteration times), ``eval_s`` (the test's mean time per
    image times the val images), its logs and checkpoint."""
    record = logs.read_metrics(work_dir / logs.METRICS_FILENAME)
    losses, times = (logs.train_series(work_dir, key) for key in ('loss', 'time'))
    scalars = [f for f in logs.scalar_files(work_dir) if logs.train_series(f, 'loss')][-1]
    test = sorted(p for p in work_dir.glob('*/*.json') if p.stem == p.parent.name)[-1]
    run = dict(name=name, seed=seed, config=record['config'], work_dir=str(work_dir))
    run.update(iters=losses[-1][0] if losses else 0, metrics=record['metrics'], losses=losses)
    run.update(train_s=sum(t for _, t in times), threads=info['threads'])
    run['eval_s'] = logs.read_scalars(test)[-1]['time'] * info['data']['num_val']
    folder = scalars.parents[1]
    log = dict(log_file=str(folder / f'{folder.name}.log'), json_log=str(scalars))
    return dict(run, **log, checkpoint=record['checkpoint'])


_REPORT = """# GC vs baseline: Mask R-CNN R18-FPN on synthetic shapes

MMDetection's Mask R-CNN FPN, ResNet-18 from scratch, trained with SGD (baseline) and with SGDGC \
(Gradient Centralization on every conv and FC weight), {pairs} with the same data and training \
seeds {seeds}, pair after pair, by tools/train_pair.sh (tools/train.py, then tools/test.py). \
COCO metric (pycocotools) on the val split, AP in points.
{command}
- data: {num_train} train / {num_val} val images (`{data_root}`, data seed {data_seed})
- machine: {machine} CPU, {cores} cores, torch {torch}

## AP on val

{table}

n/a: COCOeval has no objects of that size in the val split. The comparison checked that the runs \
differ only in the optimizer (across the sides) and the seed (within a side).

![AP of both sides](ap.png)

![AP deltas](ap_deltas.png)

## Training loss

Total loss of every iteration: the {smooth}-iteration moving average{lines}

![training loss](loss.png)

| run | first-10 mean loss | last-10 mean loss |
|---|---:|---:|
{losses}

## Time

| run | iterations | torch threads | training (s) | s / iteration | evaluation (s) |
|---|---:|---:|---:|---:|---:|
{times}

From MMEngine's logs: training is the sum of its per-iteration times, evaluation the test's mean \
time per image times the images. GC's training-time overhead over the baseline (all seeds): \
{overhead} in wall time. Whole demo (data, all runs and tests): {wall_s:.0f} s. Wall times on a \
shared CPU are noisy.

## Files

| run | config | log | JSON log | checkpoint |
|---|---|---|---|---|
{files}

Also here: the comparison's own files (`ap_comparison.md`, `ap_comparison.csv`, `ap_seeds.csv`, \
`ap_deltas.png`: table, per-seed values, delta plot), `loss.csv` (per-iteration losses of every \
run), `summary.json` (everything, machine-readable).
"""


def write_report(runs: Sequence[dict], out: Path, info: dict, command: str | None = None) -> dict:
    """Beside the comparison's files (``ap_comparison.md`` ...), write ``report.md``
    (that Markdown, then losses, timings and every run's files), ``ap.png``,
    ``loss.png``, ``loss.csv`` and ``summary.json`` (``info``: seeds, data, threads,
    wall time; GC's training-time overhead; the comparison's rows; the runs).

    Returns:
        dict: ``report`` (``report.md``'s path), ``report_dir``, ``summary``.
    """
    with open(out / 'ap_comparison.csv', newline='', encoding='utf-8') as f:
        rows = [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(f)]
    table = (out / 'ap_comparison.md').read_text(encoding='utf-8').strip()
    base, gc = (sum(r['train_s'] for r in runs if r['name'] == side) for side in _SIDES)
    summary = dict(info, gc_train_time_overhead=round(gc / base - 1, 4) if base > 0 else None)
    summary.update(confidence=rows[0]['confidence'], ap=rows)
    summary['left_out'] = [line[2:] for line in table.splitlines() if line.startswith('- ')]
    summary['runs'] = [{k: v for k, v in r.items() if k != 'losses'} for r in runs]
    (out / 'summary.json').write_text(json.dumps(summary, indent=2), encoding='utf-8')
    losses = [dict(run['losses']) for run in runs]
    with open(out / 'loss.csv', 'w', newline='', encoding='utf-8') as f:
        writer = csv.writer(f)
        writer.writerow(['iter', *(f'{r["name"]}_seed{r["seed"]}' for r in runs)])
        writer.writerows(
            [i, *(each.get(i, '') for each in losses)] for i in sorted(set().union(*losses))
        )
    loss_figure(runs).savefig(out / 'loss.png', dpi=120)
    ap_figure(rows, info['seeds']).savefig(out / 'ap.png', dpi=120)
    (out / 'report.md').write_text(_markdown(runs, summary, table, command), encoding='utf-8')
    return dict(report=str(out / 'report.md'), report_dir=str(out), summary=summary)


def _number(text: str) -> Any:
    try:
        return float(text) if text else None
    except ValueError:
        return text


def _mean(losses: list) -> str:
    return f'{np.mean([v for _, v in losses]):.3f}' if losses else 'n/a'


def _markdown(runs: Sequence[dict], summary: dict, table: str, command: str | None) -> str:
    import torch

    seeds, overhead, lines = summary['seeds'], summary['gc_train_time_overhead'], ([], [], [])
    for r in runs:
        name, per_iter = f'| {r["name"]} seed {r["seed"]} |', r['train_s'] / max(r['iters'], 1)
        lines[0].append(f'{name} {_mean(r["losses"][:10])} | {_mean(r["losses"][-10:])} |')
        times = f'{r["train_s"]:.1f} | {per_iter:.3f} | {r["eval_s"]:.1f}'
        lines[1].append(f'{name} {r["iters"]} | {r["threads"]} | {times} |')
        files = (r[key] for key in ('config', 'log_file', 'json_log', 'checkpoint'))
        lines[2].append(name + ''.join(f' `{file}` |' for file in files))
    values = dict(summary['data'], data_seed=summary['data_seed'], wall_s=summary['wall_s'])
    values.update(zip(('losses', 'times', 'files'), map('\n'.join, lines)))
    values.update(machine=platform.machine(), cores=os.cpu_count(), torch=torch.__version__)
    values.update(pairs=f'{len(seeds)} pair{"s" * (len(seeds) != 1)}', table=table)
    values.update(seeds=', '.join(map(str, seeds)), smooth=_SMOOTH)
    values['command'] = f'\nCommand: `{command}`\n' if command else ''
    values['lines'] = (
        ' (thick) and every value (thin).' if len(seeds) == 1 else ', one line per run.'
    )
    values['overhead'] = 'n/a' if overhead is None else f'{100 * overhead:+.1f}%'
    return _REPORT.format(**values)


def loss_figure(runs: Sequence[dict]) -> Any:
    """Every run's training loss against iteration (moving average; with one
    seed also every value), on a bare ``matplotlib.figure.Figure``, the legend below."""
    from matplotlib.figure import Figure

    seeds = sorted({run['seed'] for run in runs})
    fig = Figure(figsize=(7, 4.6), layout='constrained')
    ax = fig.subplots()
    for run in (r for r in runs if r['losses']):
        colour, label = _SIDES[run['name']]
        iters, values = np.array(run['losses']).T
        if len(seeds) == 1:
            ax.plot(iters, values, color=colour, alpha=0.25, linewidth=0.8)
        total = np.cumsum(np.concatenate([[0.0], values]))
        n = np.minimum(np.arange(1, len(values) + 1), _SMOOTH)  # a shorter window at the start
        smooth = (total[1:] - total[np.arange(1, len(values) + 1) - n]) / n
        style = ('-', '--', ':', '-.')[seeds.index(run['seed']) % 4]
        label += f', seed {run["seed"]}' if len(seeds) > 1 else ''
        ax.plot(iters, smooth, color=colour, linestyle=style, linewidth=2, label=label)
    title = 'Mask R-CNN R18-FPN on synthetic shapes: training loss'
    ax.set(xlabel='iteration', ylabel='training loss (total)', title=title)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        fig.legend(loc='outside lower center', ncol=3 if len(seeds) > 1 else 2, fontsize=8)
    return fig


def ap_figure(rows: Sequence[dict], seeds: Sequence[int]) -> Any:
    """Both sides' mean AP / AP50 / AP75 (bbox, segm; ``rows`` as in
    ``ap_comparison.csv``) as bars, one standard deviation as whiskers (several
    seeds), the mean written above; on a bare ``matplotlib.figure.Figure``."""
    from matplotlib.figure import Figure

    shown = [r for r in rows if r['metric'] in ('AP', 'AP50', 'AP75')]
    fig = Figure(figsize=(7.5, 4.6), layout='constrained')
    ax = fig.subplots()
    top = 0.0
    for offset, side in ((-0.19, 'baseline'), (0.19, 'gc')):
        means = [r[side] for r in shown]
        errors = [r[f'{side}_std'] or 0.0 for r in shown]
        xs = [x + offset for x in range(len(shown))]
        colour, label = _SIDES[side]
        heights = [m or 0.0 for m in means]
        whiskers = errors if any(errors) else None
        ax.bar(xs, heights, 0.38, yerr=whiskers, capsize=3, color=colour, label=label)
        for x, mean, y in zip(xs, means, np.add(heights, errors) + 1.0):
            top = max(top, y)
            text = 'n/a' if mean is None else f'{mean:.1f}'
            ax.text(x, y, text, ha='center', va='bottom', fontsize=7)
    ax.set_xticks(range(len(shown)), [f'{r["task"]}\n{r["metric"]}' for r in shown])
    ax.set(ylabel='AP (points)', ylim=(0, max(105.0, top + 6.0)))
    spread = ', mean ± 1 std over seeds ' + ', '.join(map(str, seeds)) if len(seeds) > 1 else ''
    ax.set_title(f'COCO AP on the val split{spread}')
    fig.legend(loc='outside lower center', ncol=2, fontsize=8)
    return fig
