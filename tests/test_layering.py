"""The package's layers, checked from the source (``ast``) and in a fresh interpreter.

* ``import xr_opensr`` imports neither torch nor ``training`` (the library never depends on training);
* only the entry points (``__init__``, ``accessor``, ``cli``) import ``xr_opensr.core``: the edge
  modules (plot, _io, metrics, stac, testing, training ...) take band knowledge from ``sentinel2``;
* ``models/`` does not import ``xr_opensr.metrics``;
* ``_graph`` (the dask layer) reaches no module that imports torch; the xarray-layer modules never
  import torch, not even inside a function;
* ``sentinel2`` is a leaf: numpy, xarray and ``xr_opensr.errors`` only.
* ``_config`` (the one config loader) is a leaf too: the standard library and ``xr_opensr.errors``.

Imports are read at every level (inside functions too), so a lazy import counts.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "xr_opensr"
TRAINING = ROOT / "training"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_statements(source: str, module: str, is_package: bool = False) -> list[tuple[str, str | None]]:
    """``(module, name)`` of every import anywhere in ``source``, relative imports resolved:
    ``import a.b`` gives ``("a.b", None)``, ``from a import b`` gives ``("a", "b")`` (b may be a submodule)."""
    package = module if is_package else module.rpartition(".")[0]
    found: list[tuple[str, str | None]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            found += [(target, alias.name) for alias in node.names]
    return found


def imports_of(source: str, module: str, is_package: bool = False) -> set[str]:
    """Absolute names of every module imported anywhere in ``source`` (relative imports resolved).

    ``from a import b`` yields ``a`` and ``a.b`` (b may be a submodule)."""
    found: set[str] = set()
    for target, name in import_statements(source, module, is_package):
        found.add(target)
        if name is not None:
            found.add(f"{target}.{name}")
    return found


def modules(folder: Path) -> dict[str, set[str]]:
    return {
        module_name(p): imports_of(p.read_text(encoding="utf-8"), module_name(p), p.name == "__init__.py")
        for p in sorted(folder.rglob("*.py"))
    }


def touches(imported: set[str], target: str) -> bool:
    return any(name == target or name.startswith(target + ".") for name in imported)


LIB = modules(PACKAGE)
TRAIN = modules(TRAINING)


def test_import_parser_resolves_relative_imports_and_sees_lazy_ones():
    # the checker itself: a violation written any of these ways is found
    src = "from ..metrics import psnr\ndef f():\n    import torch\n    from .. import core\n"
    found = imports_of(src, "xr_opensr.models.consistency")
    assert {"xr_opensr.metrics", "xr_opensr.metrics.psnr", "torch", "xr_opensr.core"} <= found
    assert imports_of("from . import _graph", "xr_opensr", is_package=True) >= {"xr_opensr._graph"}
    assert len(LIB) > 20 and "xr_opensr.core" in LIB and "xr_opensr.models.pipeline" in LIB


def assert_runs_without_torch(code: str) -> None:
    """``code`` runs in a fresh interpreter and leaves neither torch nor ``training`` imported."""
    check = (
        "import sys\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'training'))\n"
        "print(bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code + "\n" + check], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_import_xr_opensr_loads_neither_torch_nor_training():
    assert_runs_without_torch(
        "import xr_opensr, xr_opensr.sentinel2, xr_opensr.stac, xr_opensr.plot, xr_opensr._io, xr_opensr.sensor\n"
        "import xr_opensr.metrics, xr_opensr.testing\n"
    )


def test_the_library_never_imports_training():
    offenders = {m: sorted(i for i in imp if i.split(".")[0] == "training") for m, imp in LIB.items()}
    assert not {m: v for m, v in offenders.items() if v}


ENTRY_POINTS = {"xr_opensr", "xr_opensr.accessor", "xr_opensr.cli", "xr_opensr.core"}


def test_only_the_entry_points_import_core():
    offenders = sorted(m for m, imp in {**LIB, **TRAIN}.items()
                       if m not in ENTRY_POINTS and touches(imp, "xr_opensr.core"))
    assert offenders == []


def test_models_do_not_import_metrics():
    offenders = {m for m, imp in LIB.items() if m.startswith("xr_opensr.models") and touches(imp, "xr_opensr.metrics")}
    assert offenders == set()


def _closure(start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        mod = todo.pop()
        if mod in seen or mod not in LIB:
            continue
        seen.add(mod)
        todo += [name for name in LIB[mod] if name in LIB]
    return seen


def test_graph_reaches_no_torch():
    reach = _closure("xr_opensr._graph")
    assert "xr_opensr._graph" in reach
    offenders = sorted(m for m in reach if touches(LIB[m], "torch"))
    assert offenders == []


@pytest.mark.parametrize("module", [
    "xr_opensr.core", "xr_opensr._inputs", "xr_opensr._graph", "xr_opensr.sentinel2", "xr_opensr.stac",
    "xr_opensr.stac_conventions", "xr_opensr._io", "xr_opensr.plot", "xr_opensr.accessor", "xr_opensr._encode",
])
def test_xarray_and_dask_layers_never_import_torch(module):
    assert not touches(LIB[module], "torch"), sorted(LIB[module])


def test_sentinel2_is_a_leaf():
    own = {name for name in LIB["xr_opensr.sentinel2"] if name.startswith("xr_opensr")}
    third = {name.split(".")[0] for name in LIB["xr_opensr.sentinel2"] if not name.startswith("xr_opensr")}
    assert own <= {"xr_opensr.errors", "xr_opensr.errors.InputError"}
    assert third <= {"__future__", "collections", "dataclasses", "typing", "numpy", "xarray"}


def test_the_config_loader_is_torch_free_and_the_one_loader():
    # xr_opensr._config is a leaf (the standard library and xr_opensr.errors), so the torch-free
    # modules (testing's SceneStyle) load their configs with the same loader as the models
    own = {name for name in LIB["xr_opensr._config"] if name.startswith("xr_opensr")}
    third = {name.split(".")[0] for name in LIB["xr_opensr._config"] if not name.startswith("xr_opensr")}
    assert own <= {"xr_opensr.errors", "xr_opensr.errors.ConfigError", "xr_opensr.errors.ModelError"}
    assert third <= {"__future__", "collections", "contextlib", "dataclasses", "math", "os", "types", "typing"}
    assert touches(LIB["xr_opensr.testing"], "xr_opensr._config")
    assert_runs_without_torch(
        "from xr_opensr._config import load_config\n"
        "from xr_opensr.testing import SceneStyle\n"
        "assert SceneStyle.from_dict({'cloud_cover': [0.1, 0.2]}).cloud_cover == (0.1, 0.2)\n"
    )
