"""The reports of a :class:`~.stats.Comparison`: Markdown, two CSVs, the delta figure."""

from __future__ import annotations

import csv
import os
import os.path as osp
from collections.abc import Mapping, Sequence
from typing import Any, Optional

from .runs import TASK_TITLES, TASKS, Seed, _seed
from .stats import VERDICTS_LOWER_IS_BETTER, Comparison, ComparisonRow

__all__ = [
    'CSV_COLUMNS',
    'REPORT_FILES',
    'comparison_to_markdown',
    'delta_figure',
    'markdown_table',
    'write_report',
]

#: File names :func:`write_report` writes into its folder.
REPORT_FILES = {
    'markdown': 'ap_comparison.md',
    'csv': 'ap_comparison.csv',
    'seeds_csv': 'ap_seeds.csv',
    'png': 'ap_deltas.png',
}
#: The columns of each CSV (an empty cell: n/a).
CSV_COLUMNS = dict(
    csv='task metric gc baseline delta paper_delta gc_std baseline_std gc_runs baseline_runs '
    'pairs ci_low ci_high confidence verdict'.split(),
    seeds_csv='task metric seed gc baseline delta gc_run baseline_run'.split(),
)


def _fmt(value: Optional[float], spec: str = '+.1f') -> str:
    return 'n/a' if value is None else format(value, spec)


def _num(value: Optional[float]) -> str:
    return '' if value is None else f'{value:.3f}'


def _cells(row: ComparisonRow, labels: Mapping[Seed, str]) -> tuple[str, ...]:
    def side(mean: Optional[float], std: Optional[float]) -> str:
        return _fmt(mean, '.1f') if std is None else f'{mean:.2f} ± {std:.2f}'

    interval = row.interval and '[{:+.2f}, {:+.2f}]'.format(*row.interval)
    seeds = ', '.join(f'{labels.get(s, _seed(s))}: {d:+.1f}' for s, d in row.seed_deltas.items())
    return (
        row.metric,
        side(row.gc, row.gc_std),
        side(row.baseline, row.baseline_std),
        _fmt(row.delta, '+.2f'),
        interval or ('n/a' if row.delta is None else 'unknown'),
        seeds or 'n/a',
        _fmt(row.paper_delta),
        row.verdict,
    )


def markdown_table(header: Sequence[str], rows: Sequence[Sequence], align: str = '') -> list[str]:
    """The lines of a Markdown table; ``align[i] == 'r'`` right-aligns column ``i``."""
    rule = '|'.join('---:' if a == 'r' else '---' for a in align.ljust(len(header)))
    lines = [f'| {" | ".join(map(str, row))} |' for row in (header, *rows)]
    return [lines[0], f'|{rule}|', *lines[1:]]


def _what(comparison: Comparison) -> str:
    """What the comparison compares, for its text: COCO AP, or the tasks' metrics."""
    tasks = list(dict.fromkeys(r.task for r in comparison.rows))
    if all(task in TASKS for task in tasks):
        return 'COCO AP'
    return '; '.join(f'{task}: {TASK_TITLES[task]}' for task in tasks)


def _direction(comparison: Comparison) -> str:
    """The sentence on metrics where lower is better, if the comparison has any."""
    lower = list(dict.fromkeys(r.metric for r in comparison.rows if not r.higher_is_better))
    if not lower:
        return ''
    better, worse = VERDICTS_LOWER_IS_BETTER[2], VERDICTS_LOWER_IS_BETTER[0]
    return f" Lower is better for {', '.join(lower)}: its verdicts are '{better}' or '{worse}'."


def comparison_to_markdown(comparison: Comparison) -> str:
    """The runs, one table per task (``### bbox (AP in %)``, ``### sem_seg (mIoU, mAcc,
    aAcc in %)``, ...) and the notes, in Markdown."""
    c, level, n = comparison, f'{100 * comparison.confidence:g}%', len(comparison.pairs)
    runs = [(p.label, f'`{p.gc.source}`', f'`{p.base.source}`') for p in c.pairs]
    one = n == 1 and c.pairs[0].gc.seed != c.pairs[0].base.seed
    lines = [
        f'{n} pair{"s" * (n != 1)} of runs (seeds {", ".join(p.label for p in c.pairs)}), '
        f'{"the only run of each side" if one else "paired by seed"}:',
        '',
        *markdown_table(('seed', 'GC run', 'baseline run'), runs),
        '',
        f'{_what(c)} in percent. GC and baseline: mean ± sample standard deviation over the '
        f'runs; delta: the mean of the per-seed deltas (GC - baseline), with its {level} '
        "interval (Student's t); verdict: 'GC higher' or 'GC lower' when the interval excludes "
        f"zero, else 'no clear difference'.{_direction(c)} Paper delta: the paper's w/ GC - "
        f'w/o GC ({c.model or "no metafile entry for this config"}; n/a where the paper has no '
        'such number).',
        '',
    ]
    header = ('metric', 'GC', 'baseline', 'delta', f'{level} interval', 'per seed')
    header += ('paper delta', 'verdict')
    for task in dict.fromkeys(r.task for r in c.rows):
        rows = [_cells(r, {p.seed: p.label for p in c.pairs}) for r in c.rows if r.task == task]
        title = f'### {task} ({TASK_TITLES[task]} in %)'
        lines += [title, '', *markdown_table(header, rows, 'lrrrrlrl'), '']
    return '\n'.join(lines + [f'- {note}' for note in c.notes()]) + '\n'


def delta_figure(comparison: Comparison, title: str = '') -> Any:
    """Per task and metric: each seed's delta, the mean with its interval, the paper's delta.

    Returns:
        matplotlib.figure.Figure: On a bare figure (no pyplot), the legend below the axes.
    """
    from matplotlib.figure import Figure

    tasks = list(dict.fromkeys(r.task for r in comparison.rows))
    fig = Figure(figsize=(5.5 * len(tasks), 4.4), layout='constrained')
    level, handles = f'{100 * comparison.confidence:g}%', {}
    for ax, task in zip(fig.subplots(1, len(tasks), squeeze=False)[0], tasks):
        rows = [r for r in comparison.rows if r.task == task]
        for x, row in enumerate(rows):
            deltas, n = list(row.seed_deltas.values()), len(row.seed_deltas)
            if deltas:  # the seeds side by side, left of the mean
                xs = [x - 0.12 + (0.12 * i / (n - 1) - 0.06 if n > 1 else 0.0) for i in range(n)]
                style = dict(s=14, c='tab:gray', zorder=3, label='each seed')
                handles['seed'] = ax.scatter(xs, deltas, **style)
            if row.delta is not None:
                low, high = row.interval or (None, None)
                err = row.interval and [[row.delta - low], [high - row.delta]]
                style = dict(
                    fmt='o', color='tab:red', capsize=4, zorder=4, label=f'mean, {level} interval'
                )
                handles['mean'] = ax.errorbar([x + 0.05], [row.delta], err, **style)
            if row.paper_delta is not None:
                style = dict(marker='D', s=28, c='tab:blue', zorder=4, label="paper's delta")
                handles['paper'] = ax.scatter([x + 0.25], [row.paper_delta], **style)
        ax.axhline(0.0, color='black', linewidth=0.8)
        ax.set_xticks(range(len(rows)), [r.metric for r in rows])
        coco = task in TASKS  # the detection figure as before; others name their metrics
        ylabel = f'{"AP delta" if coco else "delta"}, GC - baseline (points)'
        heading = task if coco else f'{task}: {TASK_TITLES[task]}'
        ax.set(xlim=(-0.6, len(rows) - 0.4), ylabel=ylabel, title=heading)
        ax.grid(axis='y', alpha=0.3)
    labels = [h.get_label() for h in handles.values()]
    legend = dict(loc='outside lower center', ncol=max(1, len(handles)), fontsize=8)
    fig.legend(list(handles.values()), labels, **legend)
    seeds = ', '.join(pair.label for pair in comparison.pairs)
    fig.suptitle(f'{title + ": " if title else ""}GC vs baseline, seeds {seeds}')
    return fig


def _csv_rows(c: Comparison) -> dict[str, list[dict[str, Any]]]:
    """The rows of each CSV (:data:`CSV_COLUMNS`): per task and metric; per task,
    metric and seed."""
    rows, seeds = [], []
    numbers = ('gc', 'baseline', 'delta', 'paper_delta', 'gc_std', 'baseline_std')
    for r in c.rows:
        low, high = r.interval or (None, None)
        rows.append(
            {'task': r.task, 'metric': r.metric, **{k: _num(getattr(r, k)) for k in numbers}}
            | {'gc_runs': len(r.gc_values), 'baseline_runs': len(r.base_values)}
            | {'pairs': len(r.seed_deltas), 'ci_low': _num(low), 'ci_high': _num(high)}
            | {'confidence': f'{c.confidence:g}', 'verdict': r.verdict}
        )
        by_seed = {'gc': r.gc_values, 'baseline': r.base_values, 'delta': r.seed_deltas}
        seeds += [
            {'task': r.task, 'metric': r.metric, 'seed': '' if p.seed is None else p.seed}
            | {k: _num(values.get(p.seed)) for k, values in by_seed.items()}
            | {'gc_run': p.gc.source, 'baseline_run': p.base.source}
            for p in c.pairs
        ]
    return {'csv': rows, 'seeds_csv': seeds}


def write_report(comparison: Comparison, out_dir: str, title: Optional[str] = None) -> dict:
    """Write :data:`REPORT_FILES` into ``out_dir`` (created): the Markdown, the
    CSVs of :data:`CSV_COLUMNS` and the PNG of :func:`delta_figure` titled
    ``title`` (default: the GC config's name).

    Returns:
        dict: Paths by kind, the keys of :data:`REPORT_FILES`.
    """
    os.makedirs(out_dir, exist_ok=True)
    paths = {kind: osp.join(out_dir, name) for kind, name in REPORT_FILES.items()}
    with open(paths['markdown'], 'w', encoding='utf-8') as f:
        f.write(comparison_to_markdown(comparison))
    for kind, rows in _csv_rows(comparison).items():
        with open(paths[kind], 'w', newline='', encoding='utf-8') as f:
            writer = csv.DictWriter(f, CSV_COLUMNS[kind])
            writer.writeheader()
            writer.writerows(rows)
    title = (comparison.pairs[0].gc.config_name or '') if title is None else title
    delta_figure(comparison, title).savefig(paths['png'], dpi=100)
    return paths
