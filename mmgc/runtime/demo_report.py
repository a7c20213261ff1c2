"""The demo's report folder: the comparison's files (:func:`compare.write_report`)
and what only the demo has: ``report.md`` (the comparison's Markdown, then
losses, timings and every run's files), ``ap.png`` (both sides' APs),
``loss.csv``, ``loss.png`` and ``summary.json`` (everything, machine-readable)."""

from __future__ import annotations

import csv
import json
import os
import platform
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from . import compare

__all__ = ['DemoRun', 'ap_figure', 'loss_figure', 'write_report']

_SMOOTH = 20  # iterations in the moving average of the loss plot
_SIDES = {'baseline': ('tab:blue', 'baseline (SGD)'), 'gc': ('tab:red', 'GC (SGDGC)')}


@dataclass
class DemoRun:
    """What one training run of the demo produced.

    ``name``: ``'baseline'`` or ``'gc'``; ``metrics``: CocoMetric's results on
    the val split (fractions, -1 where COCOeval has no data); ``losses``:
    ``(iteration, total loss)`` from iteration 1; ``train_s`` and
    ``train_cpu_s``: wall and CPU time (all threads) of the training
    iterations; ``eval_s``: of the evaluation; ``total_s``: of the whole run;
    ``threads``: torch's CPU threads.
    """

    name: str
    seed: int
    config: str
    work_dir: str
    iters: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    losses: list[tuple[int, float]] = field(default_factory=list)
    train_s: float = 0.0
    train_cpu_s: float = 0.0
    eval_s: float = 0.0
    total_s: float = 0.0
    log_file: str = ''
    json_log: str = ''
    checkpoint: str = ''
    threads: int = 0

    @property
    def label(self) -> str:
        return f'{self.name} seed {self.seed}'


def write_report(
    runs: Sequence[DemoRun],
    comparison: compare.Comparison,
    report_dir: Union[str, os.PathLike],
    *,
    data: dict[str, Any],
    data_seed: int,
    wall_s: float,
    command: Optional[str] = None,
) -> dict[str, Any]:
    """Write the report folder (see the module docstring).

    Args:
        runs (Sequence[DemoRun]): Every run, both sides, all seeds.
        comparison (Comparison): The runs compared, by :func:`compare.compare_runs`.
        report_dir (str | os.PathLike): The folder (created).
        data (dict): What :func:`mmgc.runtime.shapes.make_shapes_dataset` returned.
        data_seed (int): The dataset's seed.
        wall_s (float): Wall time of the whole demo so far, in seconds.
        command (str, optional): The command line to quote.

    Returns:
        dict: ``report`` (``report.md``'s path), ``report_dir``, ``summary`` (summary.json's).

    Raises:
        ValueError: If the runs are not of both sides, ``'baseline'`` and ``'gc'``.
    """
    if {run.name for run in runs} != set(_SIDES):
        names = sorted({run.name for run in runs})
        raise ValueError(f"write_report needs 'baseline' and 'gc' runs; got {names}")
    out = Path(report_dir)
    files = compare.write_report(comparison, str(out), title='demo')  # creates the folder

    def overhead(key: str) -> Optional[float]:  # GC's total over the baseline's, minus one
        base, gc = (sum(getattr(r, key) for r in runs if r.name == side) for side in _SIDES)
        return round(gc / base - 1.0, 4) if base > 0 else None

    images = {}
    for split in ('train', 'val'):
        with open(data[f'{split}_ann'], encoding='utf-8') as f:
            images[f'num_{split}'] = len(json.load(f)['images'])
    summary = dict(
        seeds=sorted({run.seed for run in runs}), data_seed=data_seed,
        data=dict(data_root=data['data_root'], **images), wall_s=round(wall_s, 1),
        gc_train_time_overhead=overhead('train_s'), gc_train_cpu_overhead=overhead('train_cpu_s'),
        confidence=comparison.confidence, ap=[asdict(row) for row in comparison.rows],
        left_out=comparison.notes(),
        runs=[{k: v for k, v in asdict(run).items() if k != 'losses'} for run in runs],
    )  # fmt: skip
    (out / 'summary.json').write_text(json.dumps(summary, indent=2), encoding='utf-8')
    losses = [dict(run.losses) for run in runs]
    with open(out / 'loss.csv', 'w', newline='', encoding='utf-8') as f:
        csv.writer(f).writerows(
            [('iter', *(f'{r.name}_seed{r.seed}' for r in runs))]
            + [(i, *(each.get(i, '') for each in losses)) for i in sorted(set().union(*losses))]
        )
    loss_figure(runs).savefig(out / 'loss.png', dpi=120)
    ap_figure(comparison).savefig(out / 'ap.png', dpi=120)
    report = out / 'report.md'
    report.write_text(_markdown(runs, summary, command, files), encoding='utf-8')
    return dict(report=str(report.resolve()), report_dir=str(out.resolve()), summary=summary)


def _markdown(runs: Sequence[DemoRun], summary: dict, command: Optional[str], files: dict) -> str:
    import torch

    seeds, data, table = summary['seeds'], summary['data'], compare.markdown_table

    def mean(losses: list) -> str:
        return f'{np.mean([v for _, v in losses]):.3f}' if losses else 'n/a'

    def pct(v: Optional[float]) -> str:
        return 'n/a' if v is None else f'{100.0 * v:+.1f}%'

    with open(files['markdown'], encoding='utf-8') as f:
        ap_table = f.read().strip()
    return '\n'.join([
        '# GC vs baseline: Mask R-CNN R18-FPN on synthetic shapes', '',
        "MMDetection's Mask R-CNN FPN, ResNet-18 from scratch, trained with SGD (baseline) and "
        'with SGDGC (Gradient Centralization on every conv and FC weight), '
        f'{len(seeds)} pair{"s" * (len(seeds) != 1)} with the same data and training seeds '
        f"{', '.join(map(str, seeds))}, pair after pair, through tools/train.py's code path. "
        'COCO metric (pycocotools) on the val split, AP in points.', '',
        *([f'Command: `{command}`', ''] if command else []),
        f'- data: {data["num_train"]} train / {data["num_val"]} val images '
        f'(`{data["data_root"]}`, data seed {summary["data_seed"]})',
        f'- machine: {platform.machine()} CPU, {os.cpu_count()} cores, torch {torch.__version__}',
        '', '## AP on val', '', ap_table, '',
        'n/a: COCOeval has no objects of that size in the val split. The comparison checked '
        'that the runs differ only in the optimizer (across the sides) and the seed (within a '
        'side).', '', '![AP of both sides](ap.png)', '', '![AP deltas](ap_deltas.png)', '',
        '## Training loss', '',
        f'Total loss of every iteration: the {_SMOOTH}-iteration moving average'
        + (' (thick) and every value (thin).' if len(seeds) == 1 else ', one line per run.'),
        '', '![training loss](loss.png)', '',
        *table(('run', 'first-10 mean loss', 'last-10 mean loss'),
               [(r.label, mean(r.losses[:10]), mean(r.losses[-10:])) for r in runs], 'lrr'),
        '', '## Time', '',
        *table(('run', 'iterations', 'torch threads', 'training (s)', 's / iteration',
                'training CPU (s)', 'evaluation (s)', 'whole run (s)'),
               [(r.label, r.iters, r.threads, f'{r.train_s:.1f}',
                 f'{r.train_s / r.iters:.3f}' if r.iters else 'nan', f'{r.train_cpu_s:.1f}',
                 f'{r.eval_s:.1f}', f'{r.total_s:.1f}') for r in runs], 'lrrrrrrr'),
        '', "GC's training-time overhead over the baseline (all seeds): "
        f'{pct(summary["gc_train_time_overhead"])} in wall time, '
        f'{pct(summary["gc_train_cpu_overhead"])} in CPU time. Whole demo (data, all runs, '
        f'report): {summary["wall_s"]:.0f} s.',
        'Wall times on a shared CPU are noisy; CPU time (all threads of the process) is less so.',
        '', '## Files', '',
        *table(('run', 'config', 'log', 'JSON log', 'checkpoint'),
               [(r.label, f'`{r.config}`', f'`{r.log_file}`', f'`{r.json_log}`',
                 f'`{r.checkpoint or "none"}`') for r in runs]),
        '', f'Also here: {", ".join(f"`{Path(p).name}`" for p in files.values())} (the '
        'comparison: table, per-seed values, delta plot), `loss.csv` (per-iteration losses of '
        'every run), `summary.json` (everything, machine-readable).', '',
    ])  # fmt: skip


def loss_figure(runs: Sequence[DemoRun]) -> Any:
    """Every run's training loss against iteration (moving average; with one
    seed also every value), on a bare ``matplotlib.figure.Figure``, the legend below."""
    from matplotlib.figure import Figure

    seeds = sorted({run.seed for run in runs})
    fig = Figure(figsize=(7, 4.6), layout='constrained')
    ax = fig.subplots()
    for run in (r for r in runs if r.losses):
        colour, label = _SIDES[run.name]
        iters, values = np.array(run.losses).T
        if len(seeds) == 1:
            ax.plot(iters, values, color=colour, alpha=0.25, linewidth=0.8)
        total = np.cumsum(np.concatenate([[0.0], values]))
        n = np.minimum(np.arange(1, len(values) + 1), _SMOOTH)  # a shorter window at the start
        smooth = (total[1:] - total[np.arange(1, len(values) + 1) - n]) / n
        style = ('-', '--', ':', '-.')[seeds.index(run.seed) % 4]
        label += f', seed {run.seed}' if len(seeds) > 1 else ''
        ax.plot(iters, smooth, color=colour, linestyle=style, linewidth=2, label=label)
    ax.set(xlabel='iteration', ylabel='training loss (total)',
           title='Mask R-CNN R18-FPN on synthetic shapes: training loss')  # fmt: skip
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        fig.legend(loc='outside lower center', ncol=3 if len(seeds) > 1 else 2, fontsize=8)
    return fig


def ap_figure(comparison: compare.Comparison) -> Any:
    """Both sides' mean AP / AP50 / AP75 (bbox, segm) as bars, with one standard
    deviation as whiskers (several seeds) and the mean written above; on a bare
    ``matplotlib.figure.Figure``, the legend below."""
    from matplotlib.figure import Figure

    shown = [r for r in comparison.rows if r.metric in ('AP', 'AP50', 'AP75')]
    fig = Figure(figsize=(7.5, 4.6), layout='constrained')
    ax = fig.subplots()
    top = 0.0
    for offset, side in ((-0.19, 'baseline'), (0.19, 'gc')):
        means = [getattr(r, side) for r in shown]
        errors = [getattr(r, f'{side}_std') or 0.0 for r in shown]
        xs = [x + offset for x in range(len(shown))]
        colour, label = _SIDES[side]
        ax.bar(xs, [m or 0.0 for m in means], 0.38, yerr=errors if any(errors) else None,
               capsize=3, color=colour, label=label)  # fmt: skip
        for x, mean, err in zip(xs, means, errors):
            top = max(top, (mean or 0.0) + err + 1.0)
            ax.text(x, (mean or 0.0) + err + 1.0, 'n/a' if mean is None else f'{mean:.1f}',
                    ha='center', va='bottom', fontsize=7)  # fmt: skip
    ax.set_xticks(range(len(shown)), [f'{r.task}\n{r.metric}' for r in shown])
    ax.set(ylabel='AP (points)', ylim=(0, max(105.0, top + 6.0)))
    seeds = comparison.seeds
    spread = ', mean ± 1 std over seeds ' + ', '.join(map(str, seeds)) if len(seeds) > 1 else ''
    ax.set_title(f'COCO AP on the val split{spread}')
    fig.legend(loc='outside lower center', ncol=2, fontsize=8)
    return fig
