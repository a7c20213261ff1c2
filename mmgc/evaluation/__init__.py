"""Evaluation helpers: comparing a GC run's COCO APs with its baseline's."""

from .compare import (
    ComparisonRow,
    ConfigMismatchError,
    RunResult,
    compare_runs,
    config_differences,
    load_run,
    paper_deltas,
    write_report,
)

__all__ = [
    'ComparisonRow',
    'ConfigMismatchError',
    'RunResult',
    'compare_runs',
    'config_differences',
    'load_run',
    'paper_deltas',
    'write_report',
]
