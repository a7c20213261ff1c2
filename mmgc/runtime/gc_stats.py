"""Load :class:`~mmgc.engine.hooks.GCDiagnosticsHook` statistics from a work dir and
plot GC against baseline runs in the style of the paper's Fig. 4."""

from __future__ import annotations

from pathlib import Path

from .logs import read_scalars, train_series

__all__ = ['load_gc_stats', 'plot_gc_stats']

#: statistic -> (title, which logged value a run contributes)
_PANELS = {
    'norm': ('L2 norm of the gradient', 'grad_norm'),
    'max': ('max |value| of the gradient', 'grad_max'),
}


def load_gc_stats(path: str | Path) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """``{layer: {stat: [(iteration, value), ...]}}`` from a run's ``gc/<layer>/<stat>``
    scalars (:func:`mmgc.runtime.logs.train_series`).

    Args:
        path (str | Path): A work dir (all its ``<timestamp>/vis_data/scalars.json``,
            a resumed run's included) or a ``scalars.json`` file.

    Raises:
        FileNotFoundError: If there is no scalars file or it has no ``gc/``
            values.
    """
    keys = {k for record in read_scalars(path) for k in record if k.startswith('gc/')}
    stats: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for key in sorted(k for k in keys if k.count('/') >= 2):  # gc/<layer>/<stat>
        layer, stat = key[3:].rsplit('/', 1)
        stats.setdefault(layer, {})[stat] = train_series(path, key)
    if not stats:
        raise FileNotFoundError(f'no gc/ statistics in {path}: add GCDiagnosticsHook')
    return stats


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
    from matplotlib.figure import Figure

    layers = sorted({layer for stats in runs.values() for layer in stats})
    fig = Figure(figsize=(4.5 * len(layers), 3.6 * len(_PANELS)))
    axes = fig.subplots(len(_PANELS), len(layers), squeeze=False)
    for col, layer in enumerate(layers):
        for row, (title, stat) in enumerate(_PANELS.values()):
            ax = axes[row][col]
            for label, stats in runs.items():
                key = f'gc_{stat}' if label in gc_runs else stat
                points = stats.get(layer, {}).get(key)
                if points:
                    xs, ys = zip(*sorted(points))
                    ax.plot(xs, ys, label=label)
            ax.set(yscale='log', xlabel='iteration')
            ax.set_title(f'{layer}\n{title}', fontsize=9)
            ax.grid(True, which='both', alpha=0.3)
            ax.legend(fontsize=8)
    fig.tight_layout()
    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_file, dpi=120)
    return out_file
