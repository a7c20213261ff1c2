"""The demo's report: Markdown, plots, CSVs and a JSON summary.

The AP table, its statistics and the delta plot are the comparison's
(:mod:`mmgc.runtime.compare`); this module adds what only the demo has:
training losses, timings, the absolute-AP plot and the runs' files.
"""

from __future__ import annotations

import csv
import json
import os
import platform
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from . import compare

__all__ = ['DemoRun', 'ap_figure', 'loss_figure', 'write_report']

PathLike = Union[str, os.PathLike]

_HEADLINE = ('AP', 'AP50', 'AP75')
_SMOOTH = 20  # iterations in the moving average of the loss plot
_COLOURS = {'baseline': 'tab:blue', 'gc': 'tab:red'}
_LABELS = {'baseline': 'baseline (SGD)', 'gc': 'GC (SGDGC)'}
_STYLES = ('-', '--', ':', '-.')


@dataclass
class DemoRun:
    """What one training run of the demo produced.

    Attributes:
        name (str): ``'baseline'`` or ``'gc'``.
        seed (int): Its training seed.
        config (str): The config file it was built from.
        work_dir (str): MMEngine's work dir of the run.
        iters (int): Training iterations run.
        metrics (dict): The COCO metric's results on the val split, with
            MMDetection's keys (``'coco/bbox_mAP'``, ...), as fractions
            (-1 where COCOeval has no data).
        losses (list): ``(iteration, total training loss)`` of every
            iteration, counted from 1.
        train_s (float): Wall time of the training iterations (data loading
            and checkpoint saving included, evaluation excluded).
        train_cpu_s (float): CPU time (all threads of the process) of the
            training iterations: less sensitive than wall time to other
            processes sharing the CPU.
        eval_s (float): Wall time of the evaluation on the val split.
        total_s (float): Wall time of the whole run: building the runner
            and model, training and evaluation.
        log_file (str): MMEngine's text log.
        json_log (str): MMEngine's JSON log of the logged scalars.
        checkpoint (str): The checkpoint saved at the end of training.
        threads (int): Torch CPU threads the run used.
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
        """``'gc seed 0'``."""
        return f'{self.name} seed {self.seed}'


def write_report(
    runs: Sequence[DemoRun],
    comparison: compare.Comparison,
    report_dir: PathLike,
    *,
    data: dict[str, Any],
    data_seed: int,
    wall_s: float,
    command: Optional[str] = None,
) -> dict[str, Any]:
    """Write the demo's report folder.

    ``report.md``, ``loss.png``, ``ap.png``, ``loss.csv`` and
    ``summary.json``, plus the comparison's own files
    (:data:`mmgc.runtime.compare.REPORT_FILES`: ``ap_comparison.md``,
    ``ap_comparison.csv``, ``ap_seeds.csv``, ``ap_deltas.png``).

    Args:
        runs (Sequence[DemoRun]): Every run, baseline and GC, all seeds.
        comparison (Comparison): The runs compared
            (:func:`mmgc.runtime.compare.compare_runs`).
        report_dir (str | os.PathLike): Folder to write to (created).
        data (dict): What :func:`mmgc.runtime.shapes.make_shapes_dataset`
            returned.
        data_seed (int): Seed of the dataset.
        wall_s (float): Wall time of the whole demo so far, in seconds.
        command (str, optional): The command line to quote in the report.

    Returns:
        dict: ``report`` (path of ``report.md``), ``report_dir`` and
        ``summary`` (the content of ``summary.json``).

    Raises:
        ValueError: If a run is neither ``'baseline'`` nor ``'gc'``, or a
            side has no run.
    """
    names = {run.name for run in runs}
    if not names <= set(_COLOURS) or len(names) != 2:
        raise ValueError(f"write_report needs 'baseline' and 'gc' runs; got {sorted(names)}")
    out = Path(report_dir)
    out.mkdir(parents=True, exist_ok=True)
    side = {name: [r for r in runs if r.name == name] for name in _COLOURS}
    overhead = _overhead(side, 'train_s')
    summary = dict(
        seeds=sorted({run.seed for run in runs}),
        data_seed=data_seed,
        data=dict(
            data_root=data['data_root'],
            num_train=_count_images(data['train_ann']),
            num_val=_count_images(data['val_ann']),
        ),
        wall_s=round(wall_s, 1),
        gc_train_time_overhead=overhead,
        gc_train_cpu_overhead=_overhead(side, 'train_cpu_s'),
        confidence=comparison.confidence,
        ap=[_row_summary(row) for row in comparison.rows],
        left_out=comparison.notes(),
        runs=[{k: v for k, v in asdict(run).items() if k != 'losses'} for run in runs],
    )
    files = compare.write_report(comparison, str(out), title='demo')
    _write_loss_csv(out / 'loss.csv', runs)
    loss_figure(runs).savefig(out / 'loss.png', dpi=120)
    ap_figure(comparison).savefig(out / 'ap.png', dpi=120)
    with open(out / 'summary.json', 'w', encoding='utf-8') as f:
        json.dump(summary, f, indent=2)
    report = out / 'report.md'
    report.write_text(_markdown(runs, comparison, summary, command, files), encoding='utf-8')
    return dict(report=str(report.resolve()), report_dir=str(out.resolve()), summary=summary)


def _overhead(side: dict[str, list[DemoRun]], key: str) -> Optional[float]:
    """GC's total over the baseline's total, minus one (all seeds)."""
    base = sum(getattr(r, key) for r in side['baseline'])
    gc = sum(getattr(r, key) for r in side['gc'])
    return round(gc / base - 1.0, 4) if base > 0 else None


def _row_summary(row: compare.ComparisonRow) -> dict[str, Any]:
    return dict(
        task=row.task,
        metric=row.metric,
        gc=row.gc,
        gc_std=row.gc_std,
        baseline=row.baseline,
        baseline_std=row.baseline_std,
        delta=row.delta,
        interval=list(row.interval) if row.interval else None,
        seed_deltas={str(seed): value for seed, value in row.seed_deltas.items()},
        paper_delta=row.paper_delta,
        verdict=row.verdict,
    )


def _count_images(ann_file: str) -> int:
    with open(ann_file, encoding='utf-8') as f:
        return len(json.load(f)['images'])


def _pct(value: Optional[float]) -> str:
    return 'n/a' if value is None else f'{100.0 * value:+.1f}%'


def _markdown(
    runs: Sequence[DemoRun],
    comparison: compare.Comparison,
    summary: dict[str, Any],
    command: Optional[str],
    files: dict[str, str],
) -> str:
    import torch

    seeds = summary['seeds']
    pairs = f'{len(seeds)} pair{"s" if len(seeds) != 1 else ""}'
    lines = [
        '# GC vs baseline: Mask R-CNN R18-FPN on synthetic shapes',
        '',
        "MMDetection's Mask R-CNN FPN, ResNet-18 from scratch, trained with "
        'SGD (baseline) and with SGDGC (Gradient Centralization on every conv '
        f'and FC weight), {pairs} with the same data and training seeds '
        f"{', '.join(map(str, seeds))}, pair after pair, through tools/train.py's "
        'code path. COCO metric (pycocotools) on the val split, AP in points.',
        '',
    ]
    if command:
        lines += [f'Command: `{command}`', '']
    data = summary['data']
    lines += [
        f'- data: {data["num_train"]} train / {data["num_val"]} val images '
        f'(`{data["data_root"]}`, data seed {summary["data_seed"]})',
        f'- machine: {platform.machine()} CPU, {os.cpu_count()} cores, torch {torch.__version__}',
        '',
        '## AP on val',
        '',
        compare.comparison_to_markdown(comparison, heading_level=3).strip(),
        '',
        'n/a: COCOeval has no objects of that size in the val split. The '
        'comparison checked that the runs differ only in the optimizer (across '
        'the sides) and the seed (within a side).',
        '',
        '![AP of both sides](ap.png)',
        '',
        '![AP deltas](ap_deltas.png)',
        '',
        '## Training loss',
        '',
        f'Total loss of every iteration: the {_SMOOTH}-iteration moving average'
        + (' (thick) and every value (thin).' if len(seeds) == 1 else ', one line per run.'),
        '',
        '![training loss](loss.png)',
        '',
        '| run | first-10 mean loss | last-10 mean loss |',
        '|---|---:|---:|',
    ]
    for run in runs:
        values = [loss for _, loss in run.losses]
        lines.append(f'| {run.label} | {_mean(values[:10])} | {_mean(values[-10:])} |')
    lines += [
        '',
        '## Time',
        '',
        '| run | iterations | torch threads | training (s) | s / iteration '
        '| training CPU (s) | evaluation (s) | whole run (s) |',
        '|---|---:|---:|---:|---:|---:|---:|---:|',
    ]
    for run in runs:
        per_iter = run.train_s / run.iters if run.iters else float('nan')
        lines.append(
            f'| {run.label} | {run.iters} | {run.threads} | {run.train_s:.1f} | '
            f'{per_iter:.3f} | {run.train_cpu_s:.1f} | {run.eval_s:.1f} | {run.total_s:.1f} |'
        )
    lines += [
        '',
        "GC's training-time overhead over the baseline (all seeds): "
        f'{_pct(summary["gc_train_time_overhead"])} in wall time, '
        f'{_pct(summary["gc_train_cpu_overhead"])} in CPU time. Whole demo '
        f'(data, all runs, report): {summary["wall_s"]:.0f} s.',
        'Wall times on a shared CPU are noisy: other processes on the machine '
        'slow either run. CPU time (all threads of the process) is less '
        'sensitive to them; compare overheads over repeated runs.',
        '',
        '## Files',
        '',
        '| run | config | log | JSON log | checkpoint |',
        '|---|---|---|---|---|',
    ]
    for run in runs:
        lines.append(
            f'| {run.label} | `{run.config}` | `{run.log_file}` | `{run.json_log}` '
            f'| `{run.checkpoint or "none"}` |'
        )
    comparison_files = ', '.join(f'`{Path(p).name}`' for p in files.values())
    lines += [
        '',
        f'Also here: {comparison_files} (the comparison: table, per-seed '
        'values, delta plot), `loss.csv` (per-iteration losses of every run), '
        '`summary.json` (everything, machine-readable).',
        '',
    ]
    return '\n'.join(lines)


def _mean(values: list[float]) -> str:
    return f'{sum(values) / len(values):.3f}' if values else 'n/a'


def _write_loss_csv(path: Path, runs: Sequence[DemoRun]) -> None:
    losses = [dict(run.losses) for run in runs]
    iters = sorted(set().union(*losses)) if losses else []
    with open(path, 'w', newline='', encoding='utf-8') as f:
        writer = csv.writer(f)
        writer.writerow(['iter', *(f'{run.name}_seed{run.seed}' for run in runs)])
        for it in iters:
            writer.writerow([it, *(run_losses.get(it, '') for run_losses in losses)])


def _moving_average(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def loss_figure(runs: Sequence[DemoRun]) -> Any:
    """Training loss against iteration, every run; legend below the axes.

    Returns:
        matplotlib.figure.Figure: Drawn on a bare figure (no pyplot).
    """
    from matplotlib.figure import Figure

    seeds = sorted({run.seed for run in runs})
    fig = Figure(figsize=(7, 4.6), layout='constrained')
    ax = fig.subplots()
    for run in runs:
        if not run.losses:
            continue
        colour = _COLOURS[run.name]
        iters = [i for i, _ in run.losses]
        values = [v for _, v in run.losses]
        if len(seeds) == 1:
            ax.plot(iters, values, color=colour, alpha=0.25, linewidth=0.8)
        style = _STYLES[seeds.index(run.seed) % len(_STYLES)]
        label = _LABELS[run.name] + (f', seed {run.seed}' if len(seeds) > 1 else '')
        ax.plot(
            iters,
            _moving_average(values, _SMOOTH),
            color=colour,
            linestyle=style,
            linewidth=2,
            label=label,
        )
    ax.set_xlabel('iteration')
    ax.set_ylabel('training loss (total)')
    ax.set_title('Mask R-CNN R18-FPN on synthetic shapes: training loss')
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        fig.legend(loc='outside lower center', ncol=3 if len(seeds) > 1 else 2, fontsize=8)
    return fig


def ap_figure(comparison: compare.Comparison) -> Any:
    """Both sides' mean AP / AP50 / AP75 (bbox, segm) with their spread.

    Bars are the means over seeds, whiskers one standard deviation (with
    several seeds); each bar is labelled with its mean above its whisker.
    The legend sits below the axes, so it covers no label.

    Returns:
        matplotlib.figure.Figure: Drawn on a bare figure (no pyplot).
    """
    from matplotlib.figure import Figure

    shown = [r for r in comparison.rows if r.metric in _HEADLINE]
    xs = list(range(len(shown)))
    width = 0.38
    fig = Figure(figsize=(7.5, 4.6), layout='constrained')
    ax = fig.subplots()
    top = 0.0
    for offset, name, mean_key, std_key in (
        (-width / 2, 'baseline', 'baseline', 'baseline_std'),
        (width / 2, 'gc', 'gc', 'gc_std'),
    ):
        means = [getattr(r, mean_key) for r in shown]
        stds = [getattr(r, std_key) for r in shown]
        heights = [0.0 if m is None else m for m in means]
        errors = [0.0 if s is None else s for s in stds]
        positions = [x + offset for x in xs]
        ax.bar(
            positions,
            heights,
            width,
            yerr=errors if any(errors) else None,
            capsize=3,
            color=_COLOURS[name],
            label=_LABELS[name],
        )
        for x, mean, err in zip(positions, means, errors):
            y = (mean or 0.0) + err + 1.0
            top = max(top, y)
            ax.text(
                x, y, 'n/a' if mean is None else f'{mean:.1f}', ha='center', va='bottom', fontsize=7
            )
    ax.set_xticks(xs, [f'{r.task}\n{r.metric}' for r in shown])
    ax.set_ylabel('AP (points)')
    ax.set_ylim(0, max(105.0, top + 6.0))
    seeds = comparison.seeds
    spread = ', mean ± 1 std over seeds ' + ', '.join(map(str, seeds)) if len(seeds) > 1 else ''
    ax.set_title(f'COCO AP on the val split{spread}')
    fig.legend(loc='outside lower center', ncol=2, fontsize=8)
    return fig
