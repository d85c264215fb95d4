"""The notebooks run top to bottom (nbclient, the python3 kernel of this interpreter) into a temp copy."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
ALL = ("01_quickstart.ipynb", "02_stac_search_to_sr.ipynb", "03_training.ipynb", "04_time_series.ipynb")
BUDGET_S = 60  # each notebook, on 2 CPU cores


def execute(name: str, workdir: Path, monkeypatch, env: dict[str, str] | None = None):
    """Execute notebooks/<name> with ``workdir`` as its working directory; returns (notebook, seconds)."""
    import ipykernel  # noqa: F401  (notebook tests never skip: these come with the [test] extra)
    import nbclient
    import nbformat

    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel uses its inline backend (PNG outputs)
    monkeypatch.setenv("TMPDIR", str(workdir))  # temporary folders of the notebook land in workdir
    for key, value in (env or {}).items():
        monkeypatch.setenv(key, value)
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = nbclient.NotebookClient(
        nb, kernel_name="python3", timeout=300, resources={"metadata": {"path": str(workdir)}}
    )
    start = time.perf_counter()
    client.execute()
    seconds = time.perf_counter() - start
    nbformat.write(nb, workdir / name)  # the executed copy, for inspection on failure
    return nb, seconds


def text_of(nb) -> str:
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            parts.append(out.get("text", ""))
            parts.extend(str(v) for k, v in out.get("data", {}).items() if k.startswith("text/plain"))
    return "\n".join(parts)


def n_images(nb) -> int:
    return sum("image/png" in out.get("data", {}) for cell in nb.cells for out in cell.get("outputs", []))


def test_notebooks_are_committed_without_outputs():
    import nbformat

    for name in ALL:
        nb = nbformat.read(NOTEBOOKS / name, as_version=4)
        nbformat.validate(nb)
        assert nb.metadata.kernelspec.name == "python3"
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, f"{name}: strip the outputs"


@pytest.mark.notebook
def test_notebook_01_quickstart(tmp_path, monkeypatch):
    nb, seconds = execute("01_quickstart.ipynb", tmp_path, monkeypatch)
    out = text_of(nb)
    assert "model used in this notebook" in out and "computed in" in out
    from xr_opensr.models import registered_models

    if "default" not in registered_models():
        assert "NOT a meaningful" in out  # honest about the untrained fallback
    assert n_images(nb) >= 1
    assert (tmp_path / "opensr-quickstart" / "sr.tif").is_file()
    assert (tmp_path / "opensr-quickstart" / "uncertainty.tif").is_file()
    assert "layout: COG" in out
    assert seconds < 2 * BUDGET_S, f"took {seconds:.0f} s"


@pytest.mark.notebook
@pytest.mark.stac
def test_notebook_02_stac_search_to_sr(stac_api, tmp_path, monkeypatch):
    url = stac_api.url
    nb, seconds = execute("02_stac_search_to_sr.ipynb", tmp_path, monkeypatch, {"XR_OPENSR_STAC_URL": url})
    out = text_of(nb)
    assert f"STAC API: {url}" in out
    assert "least cloudy: S2A_32TMR_20240610_0_L2A" in out
    assert "natively 20 m: ['B05', 'B06', 'B07', 'B8A', 'B11', 'B12']" in out and "20 m model 's2-20m'" in out
    assert "10 bands: B04, B03, B02, B08, B05, B06, B07, B8A, B11, B12 | layout: COG" in out
    assert n_images(nb) >= 2
    assert seconds < 2 * BUDGET_S, f"took {seconds:.0f} s"


@pytest.mark.notebook
def test_notebook_03_training(tmp_path, monkeypatch):
    nb, seconds = execute("03_training.ipynb", tmp_path, monkeypatch)
    out = text_of(nb)
    assert "model.safetensors" in out and "config.json" in out
    assert n_images(nb) >= 1
    assert seconds < 2 * BUDGET_S, f"took {seconds:.0f} s"


def test_notebook_04_time_series(tmp_path, monkeypatch):
    nb, seconds = execute("04_time_series.ipynb", tmp_path, monkeypatch)
    out = text_of(nb)
    assert "computed in" in out and "looks" in out
    assert n_images(nb) >= 3
    assert seconds < BUDGET_S, f"took {seconds:.0f} s"
