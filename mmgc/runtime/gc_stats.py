"""Load :class:`~mmgc.engine.hooks.GCDiagnosticsHook` statistics from a work dir and
plot GC against baseline runs in the style of the paper's Fig. 4."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

__all__ = ['load_gc_stats', 'plot_gc_stats']

#: statistic -> (title, which logged value a run contributes)
_PANELS = {
    'norm': ('L2 norm of the gradient', 'grad_norm'),
    'max': ('max |value| of the gradient', 'grad_max'),
}


def _scalar_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    files = sorted(path.glob('**/vis_data/scalars.json'), key=lambda p: p.stat().st_mtime)
    if not files:
        raise FileNotFoundError(
            f'no vis_data/scalars.json under {path}: was the run trained with '
            f"GCDiagnosticsHook and MMEngine's LocalVisBackend?"
        )
    return files[-1:]  # the newest run in that work dir


def load_gc_stats(path: str | Path) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """``{layer: {stat: [(iteration, value), ...]}}`` from a run's scalars.

    Args:
        path (str | Path): A work dir (its newest ``vis_data/scalars.json`` is
            read) or a ``scalars.json`` file.

    Raises:
        FileNotFoundError: If there is no scalars file or it has no ``gc/``
            values.
    """
    stats: dict[str, dict[str, list[tuple[int, float]]]] = defaultdict(lambda: defaultdict(list))
    for file in _scalar_files(Path(path)):
        for line in filter(None, map(str.strip, file.read_text().splitlines())):
            record = json.loads(line)
            step = int(record.get('step', record.get('iter', 0)))
            for key, value in record.items():
                parts = key.split('/')
                if len(parts) >= 3 and parts[0] == 'gc':  # gc/<layer>/<stat>
                    stats['/'.join(parts[1:-1])][parts[-1]].append((step, float(value)))
    if not stats:
        raise FileNotFoundError(f'no gc/ statistics in {path}: add GCDiagnosticsHook')
    return {layer: dict(per_stat) for layer, per_stat in stats.items()}


def plot_gc_stats(
    runs: dict[str, dict[str, dict[str, list[tuple[int, float]]]]],
    out_file: str | Path,
    gc_runs: tuple[str, ...] = (),
) -> Path:
    """Plot gradient norm and max value per layer for several runs (log y).

    Args:
        runs: ``{label: load_gc_stats(...)}``.
        out_file: The PNG to write.
        gc_runs: Labels of GC runs: their curves show ``gc_grad_*``.

    Returns:
        Path: ``out_file``.
    """
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    layers = sorted({layer for stats in runs.values() for layer in stats})
    fig, axes = plt.subplots(
        len(_PANELS), len(layers), figsize=(4.5 * len(layers), 3.6 * len(_PANELS)), squeeze=False
    )
    for col, layer in enumerate(layers):
        for row, (title, stat) in enumerate(_PANELS.values()):
            ax = axes[row][col]
            for label, stats in runs.items():
                key = f'gc_{stat}' if label in gc_runs else stat
                points = stats.get(layer, {}).get(key)
                if points:
                    xs, ys = zip(*sorted(points))
                    ax.plot(xs, ys, label=label)
            ax.set_yscale('log')
            ax.set_title(f'{layer}\n{title}', fontsize=9)
            ax.set_xlabel('iteration')
            ax.grid(True, which='both', alpha=0.3)
            ax.legend(fontsize=8)
    fig.tight_layout()
    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_file, dpi=120)
    plt.close(fig)
    return out_file
