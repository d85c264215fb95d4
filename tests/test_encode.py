"""Compact uint16 outputs (``output_dtype="uint16"``, ``--dtype uint16``): DN = round(x * 10000), nodata 0."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import xarray as xr
from conftest import make_cube

import xr_opensr.accessor  # noqa: F401  (registers .opensr)
from xr_opensr import _encode, _io
from xr_opensr.errors import InputError

SR_KW = {"model": "tiny", "steps": 2}


def test_to_dn_rule():
    x = np.array([np.nan, -0.3, 0.0, 0.00004, 0.00005, 0.00015, 0.1234, 0.12345, 1.0, 6.5535, 7.0], np.float32)
    dn = _encode.to_dn(x)
    assert dn.dtype == np.uint16
    expected = np.rint(np.float64(x[5:9]) * 10000)  # round half to even, in float64
    np.testing.assert_array_equal(dn, [0, 1, 1, 1, 1, *expected, 65535, 65535])


@pytest.mark.parametrize("seed", [0, 1])
def test_lossless_to_1e4_on_the_physical_range(seed):
    x = np.random.default_rng(seed).uniform(0, 6.5535, 200_000).astype(np.float32)
    x[:4] = [0, 6.5535, 1e-5, 0.5]
    back = _encode.to_dn(x) * _encode.DN_SCALE
    assert np.abs(back - x).max() <= 1e-4 + 1e-7
    big = x >= 1.5e-4
    assert np.abs(back[big] - x[big]).max() <= 0.5e-4 + 1e-7  # round to nearest above the nodata guard


@pytest.mark.parametrize("value", ["float64", "int16", "garbage", 3])
def test_bad_output_dtype_is_refused_before_any_work(value):
    with pytest.raises(InputError, match="output_dtype must be 'float32'.*or 'uint16'"):
        make_cube(8, 8).opensr.superresolve(1, output_dtype=value, **SR_KW)
    assert _encode.check_output_dtype(None) == _encode.check_output_dtype(np.float32) == "float32"
    assert _encode.check_output_dtype(np.uint16) == "uint16"


@pytest.fixture(scope="module")
def results():
    cube = make_cube(24, 20, chunks={"y": 12, "x": 10})
    float_ds = cube.opensr.superresolve(2, **SR_KW)
    dn_ds = cube.opensr.superresolve(2, output_dtype="uint16", return_samples=True, **SR_KW)
    return float_ds.compute(), dn_ds


def test_superresolve_uint16_is_lazy_and_equals_the_encoded_float_result(results, no_compute):
    ref, dn_ds = results
    with no_compute():
        dn_ds = make_cube(24, 20, chunks={"y": 12, "x": 10}).opensr.superresolve(2, output_dtype="uint16", **SR_KW)
    for name in ("sr", "uncertainty"):
        var = dn_ds[name]
        assert var.dtype == np.uint16 and var.attrs["scale_factor"] == 1e-4 and var.attrs["_FillValue"] == 0
        assert var.rio.nodata == 0
        np.testing.assert_array_equal(var.values, _encode.to_dn(ref[name].values))
    assert dn_ds.attrs["output_dtype"] == "uint16" and "output_dtype" not in ref.attrs
    assert ref.sr.dtype == np.float32  # float32 stays the default


def test_uint16_cog_and_zarr_read_back_within_1e4_at_half_the_bytes(results, tmp_path):
    ref, dn_ds = results
    dn_ds = dn_ds.drop_vars("samples")
    written = _io.write_result(dn_ds, tmp_path / "dn.tif")
    for path in written:
        with rasterio.open(path) as src:
            assert src.dtypes == ("uint16",) * 4 and src.nodata == 0 and src.scales == (1e-4,) * 4
            raw = src.read()
        assert raw.nbytes * 2 == ref.sr.values.nbytes  # half the bytes of float32
    got = _io.open_result(tmp_path / "dn.tif")
    for name in ("sr", "uncertainty"):
        assert np.abs(got[name].values - ref[name].values).max() <= 1e-4 + 1e-7
    _io.write_result(dn_ds, tmp_path / "dn.zarr")
    store = xr.open_zarr(tmp_path / "dn.zarr", mask_and_scale=False)
    assert store.sr.dtype == np.uint16
    got = _io.open_result(tmp_path / "dn.zarr")  # CF decoding: float reflectance again
    for name in ("sr", "uncertainty"):
        assert np.abs(got[name].values - ref[name].values).max() <= 1e-4 + 1e-7


def test_nodata_stays_nodata(tmp_path):
    cube = make_cube(16, 16)
    cube[:, :4, :4] = 0  # nodata LR pixels -> NaN in sr -> DN 0 -> NaN again when read
    ds = cube.opensr.superresolve(1, output_dtype="uint16", **SR_KW)
    assert (ds.sr.values[:, :16, :16] == 0).all() and (ds.sr.values[:, 16:, 16:] > 0).all()
    assert (ds.uncertainty.values[:, 16:, 16:] == 1).all()  # samples=1: std 0 is stored as 0.0001, not nodata
    _io.write_result(ds, tmp_path / "n.tif")
    got = _io.open_result(tmp_path / "n.tif")
    assert np.isnan(got.sr.values[:, :16, :16]).all() and np.isfinite(got.sr.values[:, 16:, 16:]).all()
