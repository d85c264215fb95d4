"""The README's promises that no other test backs (issue 19, deliverable 5).

Each test quotes the README sentence it checks. Promises already backed elsewhere are not repeated
here (the map from promise to test is in the issue-19 report). A promise the code does not keep is
an ``xfail(strict=True)`` test that shows it: it fails today and turns into an error ("XPASS") the
day the code or the README is fixed, so the two are then brought back in line.

Small and fast (~30 s in all): tiny cubes from ``conftest.make_cube``, the ``tiny`` model with 2 samples,
the shipped default only where the promise is about it.
"""

from __future__ import annotations

import socket
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import rioxarray
import tomllib
import torch
from conftest import ALL_BANDS, S2_BANDS, make_cube, raise_if_dask_computes
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

import xr_opensr
from xr_opensr import _runtime, errors
from xr_opensr.models import load_model, registered_models
from xr_opensr.models.pipeline import SRModel
from xr_opensr.sentinel2 import GUIDED_BANDS

ROOT = Path(__file__).resolve().parents[1]
KW = {"model": "tiny", "samples": 2, "steps": 2}


def _reflectance(cube):
    """uint16 DN -> float32 reflectance without attributes (no scale declared, no nodata)."""
    out = (cube.astype(np.float64) * 1e-4).astype(np.float32)
    out.attrs = {}
    return out


def _ran_nothing_on_the_network(monkeypatch) -> list:
    """Every way out of the process raises and is recorded (code that swallowed the error is caught too)."""
    calls: list = []

    def forbid(*args, **kwargs):
        calls.append(args[:2])
        raise AssertionError(f"network access attempted: {args[:2]!r}")

    monkeypatch.setattr(socket.socket, "connect", forbid)
    monkeypatch.setattr(socket.socket, "connect_ex", forbid)
    monkeypatch.setattr(socket, "create_connection", forbid)
    monkeypatch.setattr(socket, "getaddrinfo", forbid)
    monkeypatch.setattr(urllib.request, "urlopen", forbid)
    monkeypatch.setattr(torch.hub, "download_url_to_file", forbid)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", forbid)
    return calls


# --------------------------------------------------------------------------- the quick start


def test_quickstart_is_lazy_with_the_shipped_default():
    """README: ``ds = demo_cube(chunks={"x": 64, "y": 64})``; ``result = ds.opensr.superresolve(samples=10)
    # lazy: a Dask graph, nothing computed yet``; ``result.sr # (band, y, x) 2.5 m reflectance, the mean``;
    ``result.uncertainty # (band, y, x) calibrated per-pixel standard deviation``."""
    from xr_opensr.testing import demo_cube

    ds = demo_cube(chunks={"x": 64, "y": 64})
    with raise_if_dask_computes():
        result = ds.opensr.superresolve(samples=10)
    for name in ("sr", "uncertainty"):
        assert result[name].dims == ("band", "y", "x")
        assert result[name].shape == (4, 4 * ds.sizes["y"], 4 * ds.sizes["x"])
        assert result[name].chunks is not None  # a dask array
    assert result.rio.resolution() == (2.5, -2.5)
    assert result.attrs["samples"] == 10


def test_quickstart_result_rio_to_raster_writes_the_sr(tmp_path):
    """README: ``result.sr.rio.to_raster("sr.tif", tiled=True, compress="deflate")  # streams block by block``
    (the same line as in the quick start; the tiny model instead of the default, for speed). The README
    said ``result.rio.to_raster``, which rioxarray cannot write (a Dataset of 3-D variables)."""
    result = make_cube(24, 20, chunks={"x": 8, "y": 8}).opensr.superresolve(**KW)
    path = tmp_path / "sr.tif"
    result.sr.rio.to_raster(path, tiled=True, compress="deflate")
    back = rioxarray.open_rasterio(path)
    np.testing.assert_array_equal(back.values[:4], result.sr.values)


# --------------------------------------------------------------------------- inputs and checks


def test_crs_from_a_plain_crs_attribute():
    """README: "The CRS is read from ``.rio.crs``, else from a grid-mapping variable or a
    ``crs``/``spatial_ref``/``crs_wkt``/``epsg`` attribute." (tests/test_inputs.py checks the other
    holders and an unreadable ``crs``; this is a readable one.)"""
    cube = make_cube(8, 8).drop_vars("spatial_ref")
    cube.encoding.pop("grid_mapping", None)
    cube.attrs.pop("grid_mapping", None)
    assert cube.rio.crs is None
    for text in ("EPSG:32633", "+proj=utm +zone=33 +datum=WGS84 +units=m +no_defs"):
        with raise_if_dask_computes():
            ds = cube.assign_attrs(crs=text).opensr.superresolve(**KW)
        assert ds.rio.crs.to_epsg() == 32633


@pytest.mark.parametrize(("value", "refused"), [(-0.1, False), (2.0, False), (-0.1001, True), (2.0001, True)])
def test_the_plausible_reflectance_range_is_minus_0_1_to_2_inclusive(value, refused):
    """README: "When a result is computed, reflectance outside [-0.1, 2] after scaling raises
    ``InputError``" (the edges: -0.1 and 2 are inside; tests/test_inputs.py checks far-off values)."""
    cube = _reflectance(make_cube(16, 16)).copy()
    cube[0, 3, 4] = value
    ds = cube.opensr.superresolve(**KW)
    if refused:
        with pytest.raises(errors.InputError, match=r"outside \[-0.1, 2\]"):
            ds.sr.compute()
    else:
        assert np.isfinite(ds.sr.values).all()
    dn = make_cube(16, 16).copy()
    dn[0, 3, 4] = 20000  # DN 20000 = reflectance 2: inside
    assert np.isfinite(dn.opensr.superresolve(**KW).sr.values).all()


def test_one_band_all_dark_is_clipped_at_0_and_warns_for_that_band():
    """README: "results are clipped at 0, and a band that comes out all 0 from input <= 0 gives an
    ``OpenSRWarning``" (one band, the others normal; tests/test_inputs.py darkens every band)."""
    cube = _reflectance(make_cube(16, 16)).copy()
    cube[2] = -0.05  # B02 only
    with pytest.warns(errors.OpenSRWarning, match=r"0 everywhere in 1 band\(s\).*clipped at 0"):
        sr = cube.opensr.superresolve(**KW).sr.compute(scheduler="sync")
    assert float(sr.sel(band="B02").max()) == 0.0
    assert float(sr.min()) == 0.0
    assert all(float(sr.sel(band=b).min()) > 0 for b in ("B04", "B03", "B08"))


def test_a_dark_20m_band_is_clipped_at_0_and_warns(model20):
    """README: "results are clipped at 0, and a band that comes out all 0 from input <= 0 gives an
    ``OpenSRWarning``", for a 20 m band too (seeded 20 m model)."""
    cube = _reflectance(make_cube(16, 16, bands=ALL_BANDS)).copy()
    cube.loc[{"band": "B11"}] = -0.05
    with pytest.warns(errors.OpenSRWarning, match=r"0 everywhere in 1 band\(s\)"):
        res = cube.opensr.superresolve(**KW, bands="all", model20=model20).compute(scheduler="sync")
    assert float(res.sr.sel(band="B11").max()) == 0.0
    assert float(res.sr.min()) == 0.0 and float(res.uncertainty.min()) >= 0.0
    assert (res.sr.drop_sel(band="B11").max(("y", "x")) > 0).all()  # only B11 is all 0 (random 20 m model)


# --------------------------------------------------------------------------- models


def test_the_models_table():
    """README, *Models*: ``default`` "xr-opensr-default 0.2.2, model v2: mean network 0.38 M + diffusion
    3.3 M parameters, 15 MB", patch 32, 10 steps; ``s2-20m`` "352 kB"; ``tiny`` patch 16, 4 steps (and
    "the 1.4 MB tiny weights"); a ``.ckpt``: the LDSR-S2 v1 layout, patch 128, 100 steps."""
    from xr_opensr.models.io import ldsr_s2_v1_config

    def mb(folder: Path) -> float:
        return sum(f.stat().st_size for f in folder.glob("*.safetensors")) / 1e6

    names = registered_models()
    tiny = load_model("tiny", device="cpu").config
    assert (tiny.patch_size, tiny.sampler.steps) == (16, 4) and round(mb(names["tiny"]), 1) == 1.4
    v1 = ldsr_s2_v1_config()
    assert (v1.patch_size, v1.sampler.steps) == (128, 100)
    if "default" not in names:
        pytest.skip("no trained default model is shipped in this checkout")
    default = load_model("default", device="cpu")
    cfg = default.config
    assert (cfg.name, cfg.version, cfg.patch_size, cfg.sampler.steps) == ("xr-opensr-default", "0.2.2", 32, 10)
    assert default.info.mean_without_samples  # model v2: a mean network composed with a diffusion model
    mean_net = sum(p.numel() for p in default.mean_net.parameters())
    diffusion = sum(p.numel() for p in default.diffusion.parameters())
    assert round(mean_net / 1e6, 2) == 0.38 and round(diffusion / 1e6, 1) == 3.3
    assert round(mb(names["default"])) == 15
    assert round((ROOT / "xr_opensr/weights/s2-20m/model.safetensors").stat().st_size / 1e3) == 352
    # steps=None means the model's own steps
    assert make_cube(4, 4).opensr.superresolve(1, model="tiny").attrs["steps"] == 4


def test_device_auto_is_cuda_if_available(monkeypatch):
    """README: ``model = xr_opensr.load_model("tiny", device="auto")            # cuda if available``."""
    from xr_opensr.models.pipeline import resolve_device

    model = xr_opensr.load_model("tiny", device="auto")
    assert model.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto").type == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto").type == "cpu"


def test_nothing_is_downloaded(monkeypatch):
    """README: "xr-opensr never downloads anything." Loading every shipped model and super-resolving
    all ten bands with them (the default and ``s2-20m``) with every network call forbidden."""
    calls = _ran_nothing_on_the_network(monkeypatch)
    _runtime.clear_cache()  # load again, under the ban
    try:
        for name in ("tiny", "bicubic", "bicubic+consistency", *registered_models()):
            load_model(name, device="cpu")
        from xr_opensr.models.guided import load_guided

        load_guided("s2-20m")
        res = make_cube(16, 16, bands=ALL_BANDS).opensr.superresolve(2, steps=1, bands="all")
        res = res.compute(scheduler="sync")
    finally:
        _runtime.clear_cache()  # nothing loaded under the patches outlives the test
    assert np.isfinite(res.sr.values).all() and list(res.band.values) == list(ALL_BANDS)
    assert calls == []


class _LeavesAMark:
    """Pickled into a checkpoint: unpickling it (pickled code running) creates ``path``."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_convert_runs_no_pickled_code(tmp_path, capsys):
    """README: "``xr-opensr convert opensr-ldsrs2_v1_0_0.ckpt ldsr-v1/`` (reads it with
    ``torch.load(weights_only=True)``: no pickled code runs)"; also ``model="x.ckpt"``."""
    from xr_opensr.cli import main

    mark = tmp_path / "pickled-code-ran"
    ckpt = tmp_path / "opensr-ldsrs2_v1_0_0.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": _LeavesAMark(str(mark))}, ckpt)
    assert main(["convert", str(ckpt), str(tmp_path / "ldsr-v1")]) == 2
    assert "refusing to load" in capsys.readouterr().err
    with pytest.raises(errors.CheckpointError, match="refusing to load"):
        load_model(ckpt, device="cpu")
    with raise_if_dask_computes(), pytest.raises(errors.CheckpointError, match="refusing to load"):
        make_cube(6, 6).opensr.superresolve(2, model=str(ckpt))
    assert not mark.exists() and not (tmp_path / "ldsr-v1").exists()
    torch.load(ckpt, weights_only=False)  # the payload is live: a plain load runs it
    assert mark.exists()


def test_samples_have_an_upper_bound_of_10000():
    """README: "Memory does not grow with ``samples`` (...; ``samples`` <= 10 000)"."""
    cube = make_cube(8, 8)
    with raise_if_dask_computes():
        assert cube.opensr.superresolve(10_000, model="tiny").attrs["samples"] == 10_000
    with pytest.raises(errors.InputError, match=r"samples must be in \[0, 10000\]"):
        cube.opensr.superresolve(10_001, model="tiny")


# --------------------------------------------------------------------------- the shipped default (v2)


@pytest.fixture
def counted_calls():
    """Calls of the diffusion model's parts (the denoiser, the autoencoder's decoder, the LR encoder)."""
    calls = {"denoise": 0, "decode": 0, "encode_condition": 0}
    saved = {name: getattr(SRModel, name) for name in calls}

    def counting(name):
        def method(self, *args, **kwargs):
            calls[name] += 1
            return saved[name](self, *args, **kwargs)
        return method

    for name in calls:
        setattr(SRModel, name, counting(name))
    try:
        yield calls
    finally:
        for name, method in saved.items():
            setattr(SRModel, name, method)


def test_default_sr_and_uncertainty_run_no_diffusion(counted_calls):
    """README: "so ``sr`` and ``uncertainty`` cost no diffusion (the diffusion model runs when
    ``return_samples=True``)"."""
    if "default" not in registered_models():
        pytest.skip("no trained default model is shipped in this checkout")
    res = make_cube(16, 16).opensr.superresolve(10).compute(scheduler="sync")
    assert np.isfinite(res.uncertainty.values).all() and float(res.uncertainty.mean()) > 0
    assert counted_calls == {"denoise": 0, "decode": 0, "encode_condition": 0}
    lr = np.random.default_rng(0).uniform(0.02, 0.3, (1, 4, 32, 32)).astype(np.float32)
    _runtime.get_model(_runtime.ModelRef(model="default", device="cpu")).sample_summary(
        lr, samples=2, steps=1, return_samples=True)
    assert counted_calls["denoise"] > 0 and counted_calls["decode"] > 0  # the counting sees the diffusion


def test_default_mean_and_uncertainty_do_not_depend_on_the_seed():
    """README: "The default model (v2) takes its mean and uncertainty from a deterministic mean
    network with a learned spread, and the detail of its samples from the diffusion model;
    ``samples=0`` is a fast deterministic path (the mean alone)"."""
    if "default" not in registered_models():
        pytest.skip("no trained default model is shipped in this checkout")
    cube = make_cube(16, 16)
    a = cube.opensr.superresolve(4, seed=0).compute()
    b = cube.opensr.superresolve(4, seed=7).compute()
    fast = cube.opensr.superresolve(0, seed=3).compute()
    np.testing.assert_array_equal(a.sr.values, b.sr.values)
    np.testing.assert_array_equal(a.uncertainty.values, b.uncertainty.values)
    np.testing.assert_array_equal(fast.sr.values, a.sr.values)
    assert np.isnan(fast.uncertainty.values).all()


# --------------------------------------------------------------------------- all ten bands


def test_10m_bands_are_the_four_band_run_whatever_the_20m_bands_hold(model20):
    """README: "The 10 m bands come out bit for bit as in a four-band run, whatever the 20 m bands hold."
    (other valid 20 m data, on the 20 m grid; tests/test_bands.py covers missing 20 m data)."""
    cube = make_cube(20, 18, bands=ALL_BANDS, seed=0)
    other = make_cube(20, 18, bands=ALL_BANDS, seed=7)
    mixed = cube.copy()
    for band in GUIDED_BANDS:
        mixed.loc[{"band": band}] = other.sel(band=band).values
    four = cube.sel(band=list(S2_BANDS)).opensr.superresolve(**KW).compute()
    ten = cube.opensr.superresolve(**KW, bands="all", model20=model20).compute()
    ten_mixed = mixed.opensr.superresolve(**KW, bands="all", model20=model20).compute()
    guided = list(GUIDED_BANDS)
    assert not np.array_equal(ten.sr.sel(band=guided).values, ten_mixed.sr.sel(band=guided).values)
    for name in ("sr", "uncertainty"):
        np.testing.assert_array_equal(ten_mixed[name].sel(band=list(S2_BANDS)).values, four[name].values)


# --------------------------------------------------------------------------- packaging


def test_core_dependencies_extras_and_floors():
    """README: "Extras: ``stac`` (pystac-client, odc-stac), ``distributed``, ``plot``, ``zarr``, ``train``
    (lpips, torchvision), ``all``. The core needs only numpy, xarray, dask, rioxarray, rasterio, affine,
    odc-geo, safetensors and torch (Python >= 3.11). The minimum versions in ``pyproject.toml`` are
    tested: ``.ci/check_floors.sh`` (...) installs exactly those (``.ci/floors.txt``)"."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = [Requirement(r) for r in project["dependencies"]]
    assert {r.name for r in core} == {"numpy", "xarray", "dask", "rioxarray", "rasterio", "affine", "odc-geo",
                                      "safetensors", "torch"}
    assert SpecifierSet(project["requires-python"]) == SpecifierSet(">=3.11")
    extras = project["optional-dependencies"]
    assert {"stac", "distributed", "plot", "zarr", "train", "all", "cuda"} <= set(extras)
    assert {"pystac-client", "odc-stac"} <= {Requirement(r).name for r in extras["stac"]}
    assert {"lpips", "torchvision"} <= {Requirement(r).name for r in extras["train"]}
    assert Requirement(extras["all"][0]).extras == {"stac", "distributed", "plot", "zarr", "train"}
    floors = {}
    for line in (ROOT / ".ci/floors.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            floors[name.strip()] = Version(version)
    for req in [*core, *(Requirement(r) for r in extras["stac"])]:
        (spec,) = [s for s in req.specifier if s.operator == ">="]
        assert floors.get(req.name) == Version(spec.version), (req.name, spec.version, floors.get(req.name))
    script = (ROOT / ".ci/check_floors.sh").read_text()
    assert "--constraint .ci/floors.txt" in script and "tests/test_stac_real_items.py" in script

