"""``obj.opensr.superresolve`` end to end with the real tiny model (seeded weights, fast)."""

from __future__ import annotations

import io
import subprocess
import sys
import threading
from contextlib import redirect_stdout

import dask
import numpy as np
import pytest
import rioxarray
import torch
import xarray as xr
from affine import Affine
from conftest import (
    ALL_BANDS,
    CRS,
    S2_BANDS,
    X0,
    Y0,
    make_cube,
    make_dataset,
    raise_if_dask_computes,
    seam_ratio,
)
from dask.diagnostics import ProgressBar

import xr_opensr
import xr_opensr.accessor  # noqa: F401  (registers .opensr until xr_opensr/__init__ imports it)
from xr_opensr import _kernel, errors
from xr_opensr._graph import PatchGrid
from xr_opensr.core import superresolve

KW = {"model": "tiny", "steps": 2}  # tiny: patch 16, overlap 4


def n_patches(h: int, w: int) -> int:
    return PatchGrid(h, w, 16, 4).n_patches


class Evil:
    """Pickled into a checkpoint: loading it would need arbitrary code."""


# --------------------------------------------------------------------------- registration, output


def test_import_registers_accessor_and_exports_superresolve():
    """In a fresh process: .opensr and rioxarray's .rio registered, torch and training not imported."""
    code = (
        "import sys, xarray as xr, xr_opensr; "
        "assert hasattr(xr.DataArray, 'opensr') and hasattr(xr.Dataset, 'opensr'); "
        "assert hasattr(xr.DataArray, 'rio') and hasattr(xr.Dataset, 'rio'); "
        "assert xr_opensr.superresolve is xr_opensr.core.superresolve; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'training')]; "
        "assert not bad, bad"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_output_structure_coords_and_attrs():
    cube = make_cube(9, 7, times=2, chunks={"time": 1})
    with raise_if_dask_computes():
        ds = cube.opensr.superresolve(3, seed=4, **KW)
    assert set(ds.data_vars) == {"sr", "uncertainty"}
    for name in ("sr", "uncertainty"):
        assert ds[name].dims == ("time", "band", "y", "x")
        assert ds[name].dtype == np.float32
        assert ds[name].attrs["units"] == "1"
    assert ds.sizes == {"time": 2, "band": 4, "y": 36, "x": 28}
    assert list(ds.band.values) == ["B04", "B03", "B02", "B08"]  # model order
    np.testing.assert_array_equal(ds.time.values, cube.time.values)
    # the four HR centres of an LR pixel: its centre +-1.25 m and +-3.75 m
    offsets = np.array([-3.75, -1.25, 1.25, 3.75])
    dx = ds.x.values.reshape(-1, 4) - cube.x.values[:, None]
    dy = ds.y.values.reshape(-1, 4) - cube.y.values[:, None]
    np.testing.assert_allclose(dx, np.broadcast_to(offsets, dx.shape), atol=1e-9)
    np.testing.assert_allclose(dy, np.broadcast_to(-offsets, dy.shape), atol=1e-9)
    assert ds.rio.crs == cube.rio.crs
    assert ds.rio.transform() == Affine(2.5, 0, X0, 0, -2.5, Y0)
    assert ds.rio.resolution() == (2.5, -2.5)
    attrs = ds.attrs
    assert (attrs["model"], attrs["samples"], attrs["steps"], attrs["seed"]) == ("tiny", 3, 2, 4)
    assert attrs["model_version"] == "0.1.0" and attrs["patch"] == 16 and attrs["overlap"] == 4
    assert "reflectance" in attrs["units"] and attrs["consistency"] == "none"  # the tiny model has no step
    res = ds.compute()
    assert np.isfinite(res.sr).all() and (res.uncertainty >= 0).all()
    assert 0 < float(res.sr.mean()) < 1


@pytest.mark.parametrize("dims", [("y", "x", "band"), ("band", "x", "y"), ("x", "time", "band", "y")])
def test_dims_in_input_order(dims):
    cube = make_cube(10, 8, times=2 if "time" in dims else 0, dims=dims)
    ds = cube.opensr.superresolve(2, **KW)
    assert ds.sr.dims == dims and ds.uncertainty.dims == dims
    ref = make_cube(10, 8, times=2 if "time" in dims else 0).opensr.superresolve(2, **KW)
    xr.testing.assert_identical(ds.sr.transpose(*ref.sr.dims).compute(), ref.sr.compute())


def test_dataset_odc_layout_equals_dataarray():
    ds_in = make_dataset(12, 10, extra=("scl", "B05"))
    ds_in = ds_in[["nir", "scl", "blue", "B05", "red", "green"]]  # any order, extra bands ignored
    out = ds_in.opensr.superresolve(2, **KW)
    assert out.sr.dims == ("band", "y", "x")
    assert list(out.band.values) == ["red", "green", "blue", "nir"]
    ref = make_cube(12, 10, bands=("B04", "B03", "B02", "B08", "X", "X")).isel(band=[0, 1, 2, 3])
    expected = ref.opensr.superresolve(2, **KW).compute()
    np.testing.assert_array_equal(out.sr.values, expected.sr.values)
    np.testing.assert_array_equal(out.uncertainty.values, expected.uncertainty.values)


def test_band_names_case_insensitive_and_bands_argument():
    named = make_cube(8, 8, bands=("nir", "Blue", "RED", "green", "swir"))
    a = named.opensr.superresolve(2, **KW)
    assert list(a.band.values) == ["RED", "green", "Blue", "nir"]
    custom = named.assign_coords(band=["n", "b", "r", "g", "s"])
    with pytest.raises(errors.BandError, match=r"missing bands B04 \(B4/red\).*bands=\["):
        custom.opensr.superresolve(2, **KW)
    b = custom.opensr.superresolve(2, bands=["r", "g", "b", "n"], **KW)
    c = custom.opensr.superresolve(2, bands={"B04": "r", "B03": "g", "B02": "b", "B08": "n"}, **KW)
    np.testing.assert_array_equal(b.sr.values, c.sr.values)
    np.testing.assert_array_equal(b.sr.values, a.sr.values)


def test_dn_scaling_rules():
    dn = make_cube(10, 10, nodata=None)
    refl = (dn.astype(np.float64) * 1e-4).astype(np.float32)
    refl.attrs = {}
    a = dn.opensr.superresolve(2, **KW).sr.values
    b = refl.opensr.superresolve(2, **KW).sr.values
    np.testing.assert_array_equal(a, b)  # uint16 without attrs: DN / 10000
    identity = dn.assign_attrs(scale_factor=1.0, add_offset=0.0)  # what rioxarray gives any GeoTIFF
    np.testing.assert_array_equal(identity.opensr.superresolve(2, **KW).sr.values, a)
    shifted = (dn + 1000).assign_attrs(scale_factor=1e-4, add_offset=-0.1)  # processing baseline >= 04.00
    c = shifted.opensr.superresolve(2, **KW).sr.values
    np.testing.assert_allclose(c, a, atol=2e-5)


def test_nodata_stays_nan_and_skips_kernel():
    cube = make_cube(40, 40)  # uint16, nodata=0
    data = cube.values
    data[:, :16, :16] = 0  # patch (0, 0): all nodata
    data[1, 30, 33] = 0  # one band of one pixel
    cube = cube.copy(data=data)
    _kernel.reset_kernel_stats()
    res = cube.opensr.superresolve(2, **KW).compute(scheduler="sync")
    assert _kernel.kernel_stats()["patches"] == n_patches(40, 40) - 1
    invalid = (data == 0).any(axis=0).repeat(4, 0).repeat(4, 1)
    for var in (res.sr, res.uncertainty):
        np.testing.assert_array_equal(np.isnan(var.values).any(axis=0), invalid)
        np.testing.assert_array_equal(np.isnan(var.values).all(axis=0), invalid)
    floats = (make_cube(20, 20, dtype="float32")).copy()
    floats[:, 5, 6] = np.nan
    out = floats.opensr.superresolve(2, **KW).sr.values
    assert np.isnan(out[:, 20:24, 24:28]).all() and np.isfinite(out).sum() == out.size - 4 * 16


# --------------------------------------------------------------------------- laziness, one pass


def test_lazy_and_one_kernel_pass_per_patch():
    cube = make_cube(30, 26, times=2, chunks={"time": 1, "y": 9, "x": 7})
    with raise_if_dask_computes():
        ds = cube.opensr.superresolve(2, **KW)
        assert ds.sr.attrs and ds.x.size == 104 and ds.rio.crs  # metadata needs no compute
        ds.to_zarr(store={}, compute=False)  # neither does building a write graph
    _kernel.reset_kernel_stats()
    dask.compute(ds.sr, ds.uncertainty, scheduler="threads")
    assert _kernel.kernel_stats()["patches"] == 2 * n_patches(30, 26)
    _kernel.reset_kernel_stats()
    ds.compute(scheduler="sync")
    assert _kernel.kernel_stats()["patches"] == 2 * n_patches(30, 26)


def test_task_names_and_progress_bar():
    ds = make_cube(20, 20, chunks={"y": 12}).opensr.superresolve(2, **KW)
    for name in ("sr", "uncertainty"):
        assert ds[name].data.name.startswith(f"opensr-{name}-")
    layers = ds.sr.data.dask.layers
    assert any(k.startswith("opensr-spill-") for k in layers) and any(k.startswith("opensr-blend-") for k in layers)
    again = make_cube(20, 20, chunks={"y": 12}).opensr.superresolve(2, **KW)
    assert again.sr.data.name == ds.sr.data.name  # deterministic names (tokenize)
    buf = io.StringIO()
    with redirect_stdout(buf), ProgressBar():
        ds.compute()
    assert "100% Completed" in buf.getvalue()


# --------------------------------------------------------------------------- invariance, seams, seeds


#: the band sets of the invariance and seam tests: the four 10 m bands (the diffusion model alone) and
#: all ten (the 20 m bands through the 20 m model, guided by the 10 m results of the same patch)
BAND_SETS = {"4 bands": None, "10 bands": "all"}


def _band_kw(band_set: str, model20: str) -> dict:
    return {} if BAND_SETS[band_set] is None else {"bands": "all", "model20": model20}


def _bands_cube(band_set: str, *args, **kwargs):
    return make_cube(*args, bands=ALL_BANDS if BAND_SETS[band_set] else S2_BANDS, **kwargs)


@pytest.fixture(scope="module", params=list(BAND_SETS))
def reference_result(request, model20):
    band_set = request.param
    res = _bands_cube(band_set, 28, 26, times=2, seed=3).opensr.superresolve(2, **KW, **_band_kw(band_set, model20))
    return band_set, res.compute(scheduler="sync")


@pytest.mark.parametrize("chunks", [
    {"time": 1, "y": 3, "x": 2},  # chunks smaller than the overlap
    {"time": 2, "y": (5, 20, 3), "x": (13, 13)},  # uneven
    {"time": 1, "band": 1, "y": 28, "x": 26},
])
@pytest.mark.parametrize("scheduler", ["sync", "threads"])
def test_chunk_and_scheduler_invariant(reference_result, chunks, scheduler, model20):
    band_set, reference = reference_result
    cube = _bands_cube(band_set, 28, 26, times=2, seed=3, chunks=chunks)
    res = cube.opensr.superresolve(2, **KW, **_band_kw(band_set, model20)).compute(scheduler=scheduler)
    xr.testing.assert_identical(res, reference)


@pytest.mark.parametrize("band_set", list(BAND_SETS))
def test_seamless_on_many_patches(band_set, model20):
    cube = _bands_cube(band_set, 64, 64, seed=5)  # 5 x 5 patches
    extra = _band_kw(band_set, model20)
    sr = cube.opensr.superresolve(2, **KW, **extra).sr.values
    hard = cube.opensr.superresolve(2, overlap=0, **KW, **extra).sr.values  # no blending: the metric sees seams
    assert seam_ratio(sr[:4], 12, 16) <= 1.2
    assert seam_ratio(hard[:4], 16, 16) > 1.5
    if extra:  # the 20 m bands: patch borders are 20 m pixel borders, compared with the other 20 m borders
        assert seam_ratio(sr[4:], 12, 16, period=8) <= 1.2
        assert seam_ratio(hard[4:], 16, 16, period=8) > 1.2


def test_seed_from_time_coordinate_not_position():
    cube = make_cube(12, 12, times=3)
    full = cube.opensr.superresolve(2, **KW).compute()
    one = cube.isel(time=1).opensr.superresolve(2, **KW).compute()
    np.testing.assert_array_equal(one.sr.values, full.sr.isel(time=1).values)
    shifted = cube.isel(time=[2, 1]).opensr.superresolve(2, **KW).compute()
    np.testing.assert_array_equal(shifted.sr.values, full.sr.isel(time=[2, 1]).values)
    same_data = cube.copy(data=np.repeat(cube.values[:1], 3, axis=0))
    res = same_data.opensr.superresolve(2, **KW).sr.values
    assert not np.array_equal(res[0], res[1])  # different time stamps draw different noise
    other_seed = cube.opensr.superresolve(2, seed=1, **KW).sr.values
    assert not np.array_equal(other_seed, full.sr.values)


# --------------------------------------------------------------------------- samples, small inputs


def test_samples_and_uncertainty():
    cube = make_cube(14, 15)  # one patch: no blending
    ds = cube.opensr.superresolve(3, return_samples=True, **KW)
    assert ds.samples.dims == ("sample", "band", "y", "x") and ds.sizes["sample"] == 3
    res = ds.compute()
    np.testing.assert_allclose(res.sr, res.samples.mean("sample"), atol=1e-6)
    std_scale = xr_opensr.load_model("tiny").config.std_scale
    np.testing.assert_allclose(res.uncertainty, res.samples.std("sample", ddof=1) * std_scale, atol=1e-6)
    one = cube.opensr.superresolve(1, **KW).compute()
    assert float(np.abs(one.uncertainty).max()) == 0.0
    without = cube.opensr.superresolve(3, **KW).compute()
    np.testing.assert_array_equal(without.sr.values, res.sr.values)


@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (17, 2)])
def test_cubes_smaller_than_a_patch(shape):
    cube = make_cube(*shape)
    res = cube.opensr.superresolve(2, **KW).compute()
    assert res.sr.shape == (4, 4 * shape[0], 4 * shape[1])
    assert np.isfinite(res.sr).all()
    assert res.rio.transform() == Affine(2.5, 0, X0, 0, -2.5, Y0)


# --------------------------------------------------------------------------- writing out


def test_to_zarr_streams_and_round_trips(tmp_path):
    ds = make_cube(30, 30, times=2, chunks={"time": 1}).opensr.superresolve(2, **KW)
    with raise_if_dask_computes():
        job = ds.to_zarr(tmp_path / "sr.zarr", compute=False)
    job.compute()
    back = xr.open_zarr(tmp_path / "sr.zarr", decode_coords="all")
    assert back.sr.encoding["chunks"] == tuple(c[0] for c in ds.sr.chunks)  # one block per chunk
    xr.testing.assert_identical(back.compute()[["sr", "uncertainty"]], ds.compute()[["sr", "uncertainty"]])
    assert back.rio.crs == ds.rio.crs


def test_cog_streams_and_round_trips(tmp_path):
    ds = make_cube(30, 30).opensr.superresolve(2, **KW)
    path = tmp_path / "sr.tif"
    with raise_if_dask_computes():
        job = ds.sr.rio.to_raster(path, tiled=True, compress="DEFLATE", lock=threading.Lock(), compute=False)
    job.compute()
    back = rioxarray.open_rasterio(path)
    np.testing.assert_array_equal(back.values, ds.sr.values)
    assert back.rio.transform() == ds.rio.transform() and back.rio.crs == ds.rio.crs
    np.testing.assert_allclose(back.x.values, ds.x.values)


def test_geotiff_input_with_band_descriptions(tmp_path):
    cube = make_cube(20, 18, bands=("B02", "B03", "B04", "B08"))
    cube.attrs["long_name"] = tuple(cube.band.values)
    path = tmp_path / "lr.tif"
    cube.assign_coords(band=[1, 2, 3, 4]).rio.write_nodata(0).rio.to_raster(path, tiled=True)
    lr = rioxarray.open_rasterio(path, chunks={"x": 8, "y": 8})
    assert list(lr.band.values) == [1, 2, 3, 4] and lr.attrs["scale_factor"] == 1.0
    res = lr.opensr.superresolve(2, **KW)
    assert list(res.band.values) == ["B04", "B03", "B02", "B08"]
    expected = cube.opensr.superresolve(2, **KW)
    np.testing.assert_array_equal(res.sr.values, expected.sr.values)


# --------------------------------------------------------------------------- errors (before any compute)


def _cube_with_x(values):
    return make_cube(6, 6).assign_coords(x=values)


ERRORS = [
    (lambda: make_cube(6, 6), {"samples": -1}, errors.InputError, "samples must be an integer >= 0 .* got -1"),
    (lambda: make_cube(6, 6), {"samples": 2.5}, errors.InputError, "samples must be an integer >= 0"),
    (lambda: make_cube(6, 6), {"steps": 0}, errors.InputError, "steps must be a positive integer"),
    (lambda: make_cube(6, 6), {"steps": 5000}, errors.InputError, r"steps must be in \[1, 1000\]"),
    (lambda: make_cube(6, 6), {"eta": -1.0}, errors.InputError, "eta must be"),
    (lambda: make_cube(6, 6), {"seed": -3}, errors.InputError, "seed must be a non-negative integer"),
    (lambda: make_cube(6, 6), {"patch": 15}, errors.InputError, "multiple of 2; use patch=None"),
    (lambda: make_cube(6, 6), {"overlap": 9}, errors.InputError, r"overlap=9 is too large .* 0 <= overlap <= 8"),
    (lambda: make_cube(6, 6), {"overlap": -1}, errors.InputError, "overlap must be an integer >= 0"),
    (lambda: make_cube(6, 6), {"batch_size": 0}, errors.InputError, "batch_size must be a positive integer"),
    (lambda: make_cube(6, 6), {"bands": ["B04"]}, errors.BandError, "bands must list 4 input labels"),
    (lambda: make_cube(6, 6, bands=("B02", "B03", "B04")), {}, errors.BandError, r"missing bands B08 \(B8/nir\)"),
    (lambda: make_cube(6, 6).isel(band=0), {}, errors.BandError, "no band dimension"),
    (lambda: make_dataset(6, 6)[["red", "green", "blue"]], {}, errors.BandError, "missing bands B08.*ds.rename"),
    (lambda: make_cube(6, 6).astype(np.complex64), {}, errors.InputError, "complex64; expected real numbers"),
    (lambda: make_cube(6, 6).astype(str), {}, errors.InputError, "expected real numbers"),
    (lambda: _cube_with_x(X0 + np.array([5, 15, 25, 36, 45, 55.0])), {}, errors.GridError, "irregular"),
    (lambda: make_cube(6, 6, res=20), {}, errors.GridError, "pixel size is 20 m; expected 10 m.*reproject"),
    (lambda: make_cube(6, 6, crs=None), {}, errors.GridError, r"no CRS.*rio.write_crs"),
    (lambda: make_cube(6, 6).rio.write_crs("EPSG:4326"), {}, errors.GridError, "geographic.*estimate_utm_crs"),
    (lambda: make_cube(6, 6).rename(x="col", y="row"), {}, errors.GridError, "no spatial dimensions"),
    (lambda: make_cube(6, 6), {"model": "nope"}, errors.ModelError, "unknown model name 'nope'"),
    (lambda: make_cube(6, 6), {"device": "cuda"}, errors.DeviceError, "no CUDA GPU.*device='cpu'"),
    (lambda: make_cube(6, 6), {"device": "potato"}, errors.DeviceError, r"device='potato' is not a device.*'cuda:N'"),
    (lambda: make_cube(6, 6).astype(np.uint8), {}, errors.InputError, "uint8 values without a declared scale"),
    (lambda: make_cube(6, 6).rio.write_transform(Affine.rotation(5) * Affine(10, 0, X0, 0, -10, Y0)), {},
     errors.GridError, r"rotated or sheared.*rio.reproject\("),
]


@pytest.mark.parametrize(("make", "kwargs", "error", "match"), ERRORS)
def test_errors_before_compute(make, kwargs, error, match):
    if kwargs.get("device") == "cuda" and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    obj = make()
    with raise_if_dask_computes(), pytest.raises(error, match=match):
        obj.opensr.superresolve(**{"samples": 2, **KW, **kwargs})


def test_not_xarray():
    with pytest.raises(errors.InputError, match="needs an xarray DataArray or Dataset"):
        superresolve(np.zeros((4, 8, 8)), 2, **KW)


def test_bad_checkpoints(tmp_path):
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint at all")
    unsafe = tmp_path / "unsafe.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": Evil()}, unsafe)
    cube = make_cube(6, 6)
    with raise_if_dask_computes():
        with pytest.raises(errors.CheckpointError, match="cannot read checkpoint"):
            cube.opensr.superresolve(2, model=str(garbage))
        with pytest.raises(errors.CheckpointError, match="refusing to load"):
            cube.opensr.superresolve(2, model=unsafe)
        with pytest.raises(errors.CheckpointError, match="not found"):
            cube.opensr.superresolve(2, model=str(tmp_path / "missing.ckpt"))


def test_crs_is_written_for_downstream_tools():
    ds = make_cube(6, 6).opensr.superresolve(2, **KW)
    assert ds.rio.crs.to_string() == CRS
    assert ds.sr.encoding["grid_mapping"] == "spatial_ref"


def test_shipped_default_is_seamless_on_the_demo_cube():
    """The trained default (with its per-patch consistency step) blends without seams on real data."""
    from xr_opensr.testing import demo_cube

    if "default" not in xr_opensr.registered_models():
        pytest.skip("no trained default model is shipped in this checkout (xr_opensr/weights/default)")
    cube = demo_cube()
    result = cube.opensr.superresolve(2, steps=4, seed=0)
    assert result.attrs["consistency"].startswith("1 back-projection step(s), kernel psf")
    sr = result.sr.values  # patch 32, overlap 8: stride 24
    assert np.isfinite(sr).all()
    assert seam_ratio(sr, 24, 32) <= 1.2
    hard = cube.opensr.superresolve(2, steps=4, seed=0, overlap=0).sr.values
    assert seam_ratio(hard, 32, 32) > 1.5
