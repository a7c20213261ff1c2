"""Reading and plotting what mmgc's hooks log."""

from .gc_stats import load_gc_stats, plot_gc_stats

__all__ = ['load_gc_stats', 'plot_gc_stats']
