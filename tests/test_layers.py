"""mmgc's import graph, read from the source (AST, every import statement, those
inside functions included): no circle anywhere in ``mmgc/``, and no edge from the
GC core up into the tools' runtime (``mmgc.runtime``)."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

from tests.conftest import ROOT

PACKAGE = ROOT / 'mmgc'
RUNTIME = 'mmgc.runtime'


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix('').parts
    return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def _resolve(module: str, is_package: bool, level: int, target: str | None) -> str:
    """The absolute name of a ``from <dots><target>`` inside ``module``."""
    base = module.split('.')
    base = base if is_package else base[:-1]
    base = base[: len(base) - (level - 1)] if level > 1 else base
    return '.'.join([*base, target] if target else base)


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """``{module: {mmgc modules it imports}}`` for every module under ``root``."""
    paths = {module_name(p, root.parent): p for p in root.rglob('*.py')}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        edges: set[str] = set()
        is_package = path.name == '__init__.py'
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                source = node.module
                if node.level:
                    source = _resolve(name, is_package, node.level, node.module)
                # 'from pkg import mod' imports the module pkg.mod; else pkg itself
                targets = [
                    f'{source}.{a.name}' if f'{source}.{a.name}' in paths else source
                    for a in node.names
                ]
            else:
                continue
            edges.update(t for t in targets if t in paths and t != name)
        graph[name] = edges
    return graph


def test_the_graph_is_read():
    graph = import_graph()
    assert 'mmgc.engine.optimizers.capability' in graph['mmgc.engine.optimizers.sgd_gc']
    assert 'mmgc._compat' in graph['mmgc.ops.centralize']
    assert 'mmgc.engine.optimizers.strategies' in graph['mmgc.runtime.cli']


def test_no_import_circle():
    graph = import_graph()
    try:
        order = list(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as err:
        raise AssertionError(f'mmgc has an import circle: {" -> ".join(err.args[1])}') from None
    assert set(order) == set(graph)


def test_the_core_does_not_import_the_runtime():
    upward = {
        (module, target)
        for module, targets in import_graph().items()
        if not (module == RUNTIME or module.startswith(RUNTIME + '.'))
        for target in targets
        if target == RUNTIME or target.startswith(RUNTIME + '.')
    }
    assert not upward, f'core modules import the runtime: {sorted(upward)}'


def test_a_circle_is_found(tmp_path):
    package = tmp_path / 'mmgc'
    (package / 'sub').mkdir(parents=True)
    for init in (package / '__init__.py', package / 'sub' / '__init__.py'):
        init.write_text('')
    (package / 'sub' / 'a.py').write_text('from . import b\n')
    (package / 'sub' / 'b.py').write_text('def f():\n    from .a import x\n')
    graph = import_graph(package)
    assert graph['mmgc.sub.a'] == {'mmgc.sub.b'} and graph['mmgc.sub.b'] == {'mmgc.sub.a'}
    with pytest.raises(graphlib.CycleError):
        list(graphlib.TopologicalSorter(graph).static_order())
