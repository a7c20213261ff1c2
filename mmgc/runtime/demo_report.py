"""The demo's report: a Markdown file, two PNG plots, a CSV and a JSON summary."""

from __future__ import annotations

import csv
import json
import os
import platform
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

if TYPE_CHECKING:  # pragma: no cover
    from .demo import DemoRun

__all__ = ['AP_METRICS', 'ap_rows', 'write_report']

PathLike = Union[str, os.PathLike]

# (task, column name, key in MMDetection's CocoMetric results)
AP_METRICS: tuple[tuple[str, str, str], ...] = tuple(
    (task, name, f'coco/{task}_mAP{suffix}')
    for task in ('bbox', 'segm')
    for name, suffix in (
        ('AP', ''),
        ('AP50', '_50'),
        ('AP75', '_75'),
        ('APs', '_s'),
        ('APm', '_m'),
        ('APl', '_l'),
    )
)
_HEADLINE = ('AP', 'AP50', 'AP75')
_SMOOTH = 20  # iterations in the moving average of the loss plot


def ap_rows(baseline: dict[str, float], gc: dict[str, float]) -> list[dict[str, Any]]:
    """The comparison table: one row per task and metric, APs in percent.

    COCOeval reports -1 where it has no data (e.g. no small objects); such
    cells are ``None`` and have no delta.

    Args:
        baseline (dict): CocoMetric results of the baseline run.
        gc (dict): CocoMetric results of the GC run.

    Returns:
        list[dict]: Rows with ``task``, ``metric``, ``baseline``, ``gc`` and
        ``delta`` (GC minus baseline), in AP points.
    """
    rows = []
    for task, name, key in AP_METRICS:
        base, ours = _points(baseline.get(key)), _points(gc.get(key))
        delta = None if base is None or ours is None else round(ours - base, 1)
        rows.append(dict(task=task, metric=name, baseline=base, gc=ours, delta=delta))
    return rows


def write_report(
    runs: list[DemoRun],
    report_dir: PathLike,
    *,
    data: dict[str, Any],
    seed: int,
    data_seed: int,
    wall_s: float,
    command: Optional[str] = None,
    comparison: Optional[dict[str, Any]] = None,
) -> dict[str, Any]:
    """Write ``report.md``, ``loss.png``, ``ap.png``, ``ap.csv``,
    ``loss.csv`` and ``summary.json`` into ``report_dir``.

    Args:
        runs (list[DemoRun]): The baseline run, then the GC run.
        report_dir (str | os.PathLike): Folder to write to (created).
        data (dict): What :func:`mmgc.runtime.shapes.make_shapes_dataset` returned.
        seed (int): Training seed of both runs.
        data_seed (int): Seed of the dataset.
        wall_s (float): Wall time of the whole demo so far, in seconds.
        command (str, optional): The command line to quote in the report.
        comparison (dict, optional): What the comparison tool
            (``tools/compare_ap.py``) did: ``tool``, ``returncode``,
            ``output`` and ``markdown`` (its table).

    Returns:
        dict: ``report`` (path of ``report.md``), ``report_dir`` and
        ``summary`` (the content of ``summary.json``).
    """
    by_name = {run.name: run for run in runs}
    if set(by_name) != {'baseline', 'gc'}:
        raise ValueError(
            f"write_report needs one 'baseline' and one 'gc' run; got {sorted(by_name)}"
        )
    base, gc = by_name['baseline'], by_name['gc']
    out = Path(report_dir)
    out.mkdir(parents=True, exist_ok=True)

    rows = ap_rows(base.metrics, gc.metrics)
    overhead = (gc.train_s / base.train_s - 1.0) if base.train_s > 0 else None
    summary = dict(
        seed=seed,
        data_seed=data_seed,
        data=dict(
            data_root=data['data_root'],
            num_train=_count_images(data['train_ann']),
            num_val=_count_images(data['val_ann']),
        ),
        wall_s=round(wall_s, 1),
        gc_train_time_overhead=None if overhead is None else round(overhead, 4),
        comparison_tool=(comparison or {}).get('tool'),
        comparison_tool_returncode=(comparison or {}).get('returncode'),
        gc_train_cpu_overhead=(
            round(gc.train_cpu_s / base.train_cpu_s - 1.0, 4) if base.train_cpu_s > 0 else None
        ),
        ap=rows,
        runs={run.name: {k: v for k, v in asdict(run).items() if k != 'losses'} for run in runs},
    )
    _write_csv(out / 'ap.csv', rows)
    _write_loss_csv(out / 'loss.csv', base, gc)
    _plot_losses(out / 'loss.png', base, gc)
    _plot_aps(out / 'ap.png', rows)
    with open(out / 'summary.json', 'w', encoding='utf-8') as f:
        json.dump(summary, f, indent=2)
    report = out / 'report.md'
    report.write_text(
        _markdown(base, gc, rows, summary, overhead, command, comparison or {}),
        encoding='utf-8',
    )
    return dict(report=str(report.resolve()), report_dir=str(out.resolve()), summary=summary)


def _points(value: Optional[float]) -> Optional[float]:
    """A COCO fraction as AP points (one decimal); ``None`` for missing/-1."""
    if value is None or value < 0:
        return None
    return round(100.0 * value, 1)


def _count_images(ann_file: str) -> int:
    with open(ann_file, encoding='utf-8') as f:
        return len(json.load(f)['images'])


def _fmt(value: Optional[float], signed: bool = False) -> str:
    if value is None:
        return 'n/a'
    return f'{value:+.1f}' if signed else f'{value:.1f}'


def _markdown(
    base: DemoRun,
    gc: DemoRun,
    rows: list[dict[str, Any]],
    summary: dict[str, Any],
    overhead: Optional[float],
    command: Optional[str],
    comparison: dict[str, Any],
) -> str:
    import torch

    lines = [
        '# GC vs baseline: Mask R-CNN R18-FPN on synthetic shapes',
        '',
        "MMDetection's Mask R-CNN FPN, ResNet-18 from scratch, trained twice "
        'with the same seed and data: once with SGD (baseline), once with '
        'SGDGC (Gradient Centralization on every conv and FC weight). '
        'COCO metric (pycocotools) on the val split, AP in points.',
        '',
    ]
    if command:
        lines += [f'Command: `{command}`', '']
    data = summary['data']
    lines += [
        f'- data: {data["num_train"]} train / {data["num_val"]} val images '
        f'(`{data["data_root"]}`, data seed {summary["data_seed"]})',
        f'- training seed: {summary["seed"]}; iterations: baseline {base.iters}, GC {gc.iters}',
        f'- machine: {platform.machine()} CPU, {os.cpu_count()} cores, torch '
        f'{torch.__version__}; torch threads: baseline {base.threads}, GC {gc.threads}',
        '',
        '## AP on val',
        '',
        '| task | metric | baseline | GC | delta (GC - baseline) |',
        '|---|---|---:|---:|---:|',
    ]
    for row in rows:
        lines.append(
            f'| {row["task"]} | {row["metric"]} | {_fmt(row["baseline"])} | '
            f'{_fmt(row["gc"])} | {_fmt(row["delta"], signed=True)} |'
        )
    lines += [
        '',
        'n/a: COCOeval has no objects of that size in the val split.',
        '',
    ]
    lines += _comparison_section(comparison)
    lines += [
        '![AP comparison](ap.png)',
        '',
        '## Training loss',
        '',
        f'Total loss of every iteration (thin) and its {_SMOOTH}-iteration moving average (thick).',
        '',
        '![training loss](loss.png)',
        '',
        '| run | first-10 mean loss | last-10 mean loss |',
        '|---|---:|---:|',
    ]
    for run in (base, gc):
        values = [loss for _, loss in run.losses]
        lines.append(f'| {run.name} | {_mean(values[:10])} | {_mean(values[-10:])} |')
    lines += [
        '',
        '## Time',
        '',
        '| run | iterations | training (s) | s / iteration | training CPU (s) '
        '| evaluation (s) | whole run (s) |',
        '|---|---:|---:|---:|---:|---:|---:|',
    ]
    for run in (base, gc):
        per_iter = run.train_s / run.iters if run.iters else float('nan')
        lines.append(
            f'| {run.name} | {run.iters} | {run.train_s:.1f} | {per_iter:.3f} | '
            f'{run.train_cpu_s:.1f} | {run.eval_s:.1f} | {run.total_s:.1f} |'
        )
    cpu_overhead = summary['gc_train_cpu_overhead']
    lines += [
        '',
        "GC's training-time overhead over the baseline: "
        + ('n/a' if overhead is None else f'{100.0 * overhead:+.1f}%')
        + ' in wall time, '
        + ('n/a' if cpu_overhead is None else f'{100.0 * cpu_overhead:+.1f}%')
        + ' in CPU time. Whole demo (data, both runs, report): '
        + f'{summary["wall_s"]:.0f} s.',
        'Wall times on a shared CPU are noisy: other processes on the machine '
        'slow either run. CPU time (all threads of the process) is less '
        'sensitive to them; compare overheads over repeated runs.',
        '',
        '## Files',
        '',
        '| run | config | log | JSON log | checkpoint |',
        '|---|---|---|---|---|',
    ]
    for run in (base, gc):
        lines.append(
            f'| {run.name} | `{run.config}` | `{run.log_file}` | `{run.json_log}` '
            f'| `{run.checkpoint or "none"}` |'
        )
    lines += [
        '',
        'Also here: `ap.csv` (the table above), `loss.csv` (per-iteration '
        'losses), `summary.json` (everything, machine-readable).',
        '',
    ]
    return '\n'.join(lines)


def _comparison_section(comparison: dict[str, Any]) -> list[str]:
    """The report's section on the comparison tool's run."""
    tool = comparison.get('tool')
    if not tool:
        return [
            'The comparison tool (`tools/compare_ap.py`) was not found, so the '
            "table above is the demo's own and the two configs were not "
            'checked for differences beyond the optimizer.',
            '',
        ]
    if comparison.get('returncode') != 0:
        return [
            f'The comparison tool (`{tool}`) failed with exit code '
            f"{comparison.get('returncode')}; the table above is the demo's own. "
            'Its output:',
            '',
            '```',
            comparison.get('output', ''),
            '```',
            '',
        ]
    return [
        f"### The comparison tool's table (`{Path(tool).name}`)",
        '',
        "It checked that the two runs' configs differ only in the optimizer; "
        'its files are `ap_comparison.md`, `ap_comparison.csv` and '
        '`ap_deltas.png` here.',
        '',
        comparison.get('markdown', '').strip(),
        '',
    ]


def _mean(values: list[float]) -> str:
    return f'{sum(values) / len(values):.3f}' if values else 'n/a'


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, 'w', newline='', encoding='utf-8') as f:
        writer = csv.DictWriter(f, fieldnames=['task', 'metric', 'baseline', 'gc', 'delta'])
        writer.writeheader()
        writer.writerows(rows)


def _write_loss_csv(path: Path, base: DemoRun, gc: DemoRun) -> None:
    losses = {name: dict(run.losses) for name, run in (('b', base), ('g', gc))}
    iters = sorted(set(losses['b']) | set(losses['g']))
    with open(path, 'w', newline='', encoding='utf-8') as f:
        writer = csv.writer(f)
        writer.writerow(['iter', 'baseline_loss', 'gc_loss'])
        for it in iters:
            writer.writerow([it, losses['b'].get(it, ''), losses['g'].get(it, '')])


def _moving_average(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def _plot_losses(path: Path, base: DemoRun, gc: DemoRun) -> None:
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for run, colour, label in (
        (base, 'tab:blue', 'baseline (SGD)'),
        (gc, 'tab:red', 'GC (SGDGC)'),
    ):
        if not run.losses:
            continue
        iters = [i for i, _ in run.losses]
        values = [v for _, v in run.losses]
        ax.plot(iters, values, color=colour, alpha=0.25, linewidth=0.8)
        ax.plot(
            iters,
            _moving_average(values, _SMOOTH),
            color=colour,
            linewidth=2,
            label=label,
        )
    ax.set_xlabel('iteration')
    ax.set_ylabel('training loss (total)')
    ax.set_title('Mask R-CNN R18-FPN on synthetic shapes: training loss')
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _plot_aps(path: Path, rows: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    shown = [r for r in rows if r['metric'] in _HEADLINE]
    labels = [f'{r["task"]}\n{r["metric"]}' for r in shown]
    xs = range(len(shown))
    width = 0.38
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for offset, key, colour, label in (
        (-width / 2, 'baseline', 'tab:blue', 'baseline (SGD)'),
        (width / 2, 'gc', 'tab:red', 'GC (SGDGC)'),
    ):
        values = [r[key] if r[key] is not None else 0.0 for r in shown]
        bars = ax.bar([x + offset for x in xs], values, width, color=colour, label=label)
        ax.bar_label(bars, fmt='%.1f', fontsize=8)
    ax.set_xticks(list(xs), labels)
    ax.set_ylabel('AP (points)')
    ax.set_ylim(0, 105)
    ax.set_title('COCO AP on the val split')
    ax.legend(loc='lower right')
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
