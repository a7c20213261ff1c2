"""High-level entry points: the GC-vs-baseline demo."""

from .demo import (
    DemoRun,
    demo_config,
    run_demo,
    train_and_evaluate,
    train_in_subprocess,
)

__all__ = [
    'DemoRun',
    'demo_config',
    'run_demo',
    'train_and_evaluate',
    'train_in_subprocess',
]
