"""No import cycles among the modules of ``xr_opensr/`` and ``training/``, and no private name of the
library imported by ``training``; both read from the source (``ast``).

Every import counts, at every level (inside functions too), relative imports resolved
(:func:`test_layering.import_statements`). An edge goes to the module an import names: ``import a.b``
and ``from a import b`` with ``b`` a submodule -> ``a.b``; ``from a import name`` -> ``a``. The parent
packages Python initialises on the way are no edges (a package that imports its own submodules would
otherwise always close a cycle).
"""

from __future__ import annotations

from collections.abc import Container

from test_layering import ROOT, import_statements, module_name

FOLDERS = ("xr_opensr", "training")

#: private names of the library that training imports today, each waiting for a public name in a
#: module training may not change; an entry no longer imported fails, so it is removed with the fix
KNOWN_PRIVATE = {
    # the one config loader (Rules, load_config) of the torch-free configs; xr_opensr.models.config
    # re-exports it but imports torch
    ("training.data", "xr_opensr._config"),
    ("training.degradation", "xr_opensr._config"),
}


def edges(statements: list[tuple[str, str | None]], known: Container[str]) -> set[str]:
    """The modules of ``known`` that ``statements`` (:func:`test_layering.import_statements`) name."""
    out = set()
    for target, name in statements:
        found = f"{target}.{name}" if name is not None and f"{target}.{name}" in known else target
        while found and found not in known:  # `import a.b.c` of a name that is no module: its module
            found = found.rpartition(".")[0]
        if found:
            out.add(found)
    return out


def import_graph(sources: dict[str, tuple[str, bool]]) -> dict[str, set[str]]:
    """Module -> the modules it imports, from module -> (source, is_package)."""
    return {module: edges(import_statements(src, module, is_package), sources) - {module}
            for module, (src, is_package) in sources.items()}


def tangles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components of ``graph`` with more than one module (Tarjan, iterative):
    each holds one or more import cycles."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []
    for root in sorted(graph):
        if root in index:
            continue
        index[root] = low[root] = len(index)
        stack.append(root)
        work = [(root, iter(sorted(graph[root])))]
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    at = stack.index(node)
                    part, stack[at:] = stack[at:], []
                    if len(part) > 1:
                        found.append(set(part))
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                work.append((child, iter(sorted(graph[child]))))
            elif child in stack:
                low[node] = min(low[node], index[child])
    return found


def shortest_cycle(graph: dict[str, set[str]], tangle: set[str]) -> list[str]:
    """The shortest import cycle through the first module of ``tangle`` (breadth first)."""
    start = min(tangle)
    paths = {start: [start]}
    todo = [start]
    while todo:
        node = todo.pop(0)
        for child in sorted(graph[node] & tangle):
            if child == start:
                return paths[node]
            if child not in paths:
                paths[child] = [*paths[node], child]
                todo.append(child)
    raise AssertionError(f"{sorted(tangle)} holds no cycle through {start}")


def _show(graph: dict[str, set[str]], found: list[set[str]]) -> str:
    lines = []
    for tangle in found:
        cycle = shortest_cycle(graph, tangle)
        lines.append(" -> ".join([*cycle, cycle[0]]) + f"   (modules in the tangle: {', '.join(sorted(tangle))})")
    return "\n".join(lines)


def private_imports(module: str, statements: list[tuple[str, str | None]]) -> set[tuple[str, str]]:
    """``(module, xr_opensr.….private)``: each import of a private library name (``_x``, or anything in a
    private module), named up to its first private part."""
    found = set()
    for target, name in statements:
        parts = [*target.split("."), *([name] if name is not None else [])]
        if parts[0] != "xr_opensr":
            continue
        private = [i for i, part in enumerate(parts) if part.startswith("_") and not part.endswith("__")]
        if private:
            found.add((module, ".".join(parts[: private[0] + 1])))
    return found


def _sources(folders: tuple[str, ...]) -> dict[str, tuple[str, bool]]:
    files = [p for folder in folders for p in sorted((ROOT / folder).rglob("*.py"))]
    return {module_name(p): (p.read_text(encoding="utf-8"), p.name == "__init__.py") for p in files}


SOURCES = _sources(FOLDERS)
GRAPH = import_graph(SOURCES)
TRAINING_PRIVATE = set().union(*(private_imports(m, import_statements(src, m, is_package))
                                 for m, (src, is_package) in SOURCES.items() if m.split(".")[0] == "training"))


def test_the_checker_sees_every_import_form_and_no_parent_package_edges():
    sources = {
        "pkg": ("from . import a\n", True),
        "pkg.a": ("def f():\n    from .b import thing\n", False),  # lazy and relative
        "pkg.b": ("import pkg.sub.c\n", False),
        "pkg.sub": ("", True),
        "pkg.sub.c": ("from .. import a as again\nimport numpy\n", False),  # a submodule by `from`
        "pkg.d": ("from pkg import a\nfrom pkg.sub import c\n", False),  # no edge to pkg or pkg.sub
    }
    graph = import_graph(sources)
    assert graph == {"pkg": {"pkg.a"}, "pkg.a": {"pkg.b"}, "pkg.b": {"pkg.sub.c"}, "pkg.sub": set(),
                     "pkg.sub.c": {"pkg.a"}, "pkg.d": {"pkg.a", "pkg.sub.c"}}
    assert tangles(graph) == [{"pkg.a", "pkg.b", "pkg.sub.c"}]
    assert _show(graph, tangles(graph)).startswith("pkg.a -> pkg.b -> pkg.sub.c -> pkg.a")
    assert tangles({"x": {"y"}, "y": set()}) == []
    src = ("from xr_opensr._config import load_config\nfrom xr_opensr.models.io import _resolve, CONFIG_FILE\n"
           "import xr_opensr.__about__\nfrom numpy import _x\n")
    assert private_imports("t", import_statements(src, "t")) == {("t", "xr_opensr._config"),
                                                                 ("t", "xr_opensr.models.io._resolve")}
    assert len(GRAPH) > 40 and "training.card" in GRAPH and "xr_opensr.models.pipeline" in GRAPH


def test_no_import_cycles():
    found = tangles(GRAPH)
    assert not found, ("import cycles (break each, e.g. by moving what both sides need into a module that "
                       "imports neither):\n" + _show(GRAPH, found))


def test_training_imports_nothing_private_of_the_library():
    found = TRAINING_PRIVATE - KNOWN_PRIVATE
    assert not found, f"training imports private names of xr_opensr: {sorted(found)}; use (or add) a public one"


def test_known_private_imports_are_still_imported():
    gone = KNOWN_PRIVATE - TRAINING_PRIVATE
    assert not gone, f"no longer imported: remove {sorted(gone)} from KNOWN_PRIVATE"
