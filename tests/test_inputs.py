"""What the accessor accepts as input: Zarr/netCDF/GeoTIFF (CF-decoded DN), CRS attributes, rotated
grids, 8-bit data, and the value checks made when a result is computed (tiny model, samples 2, steps 2)."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest
import rioxarray
import xarray as xr
from affine import Affine
from conftest import CRS, X0, Y0, make_cube, raise_if_dask_computes

import xr_opensr  # noqa: F401  (registers .opensr)
from xr_opensr import errors
from xr_opensr.models import load_model, save_model

KW = {"model": "tiny", "samples": 2, "steps": 2}

def _sr(obj, **kwargs) -> np.ndarray:
    return obj.opensr.superresolve(**{**KW, **kwargs}).sr.values


@pytest.fixture(scope="module")
def dn_cube() -> xr.DataArray:
    """uint16 DN (reflectance x 10000), nodata 0, with a nodata pixel."""
    cube = make_cube(24, 20).copy()
    cube[:, 5, 7] = 0
    return cube


@pytest.fixture(scope="module")
def reference(dn_cube) -> np.ndarray:
    return _sr(dn_cube)


# --------------------------------------------------------------------------- a fresh process


def test_fresh_process_reads_zarr_without_torch_or_training_at_import(tmp_path, dn_cube):
    """``import xr_opensr`` alone registers ``.rio`` (Zarr has no rioxarray import of its own) and
    imports neither torch nor training; the accessor then works on ``xr.open_zarr``."""
    store = tmp_path / "in.zarr"
    dn_cube.to_dataset(name="reflectance").to_zarr(store)
    code = f"""
import sys, warnings
warnings.simplefilter("ignore")
import numpy as np, xarray as xr, xr_opensr
assert hasattr(xr.Dataset, "rio") and hasattr(xr.Dataset, "opensr")
bad = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "training"))
assert not bad, bad
ds = xr.open_zarr({str(store)!r})
out = ds.opensr.superresolve(model="tiny", samples=2, steps=2)
sr = out.sr.values
assert sr.shape == (4, 96, 80) and np.isfinite(sr).sum() == sr.size - 4 * 16, np.isfinite(sr).sum()
assert 0.01 < float(np.nanmean(sr)) < 1, float(np.nanmean(sr))  # reflectance, not DN
np.save({str(tmp_path / "sr.npy")!r}, sr)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert float(np.nanmean(np.load(tmp_path / "sr.npy"))) < 1


# --------------------------------------------------------------------------- CF-decoded DN


def test_cf_decoded_dn_zarr_equals_the_geotiff(tmp_path, dn_cube, reference):
    """The same uint16 cube as a GeoTIFF and as a Zarr (xarray decodes it to float32 because of
    its _FillValue): identical results, both from DN / 10000."""
    tif, store = tmp_path / "in.tif", tmp_path / "in.zarr"
    dn_cube.rio.to_raster(tif)
    dn_cube.to_dataset(name="reflectance").to_zarr(store)
    zarr_in = xr.open_zarr(store).reflectance
    assert zarr_in.dtype == np.float32 and zarr_in.encoding["dtype"] == np.uint16  # decoded DN
    geotiff = rioxarray.open_rasterio(tif, chunks={})
    np.testing.assert_array_equal(_sr(geotiff), reference)
    np.testing.assert_array_equal(_sr(zarr_in), reference)
    # and the other way: the GeoTIFF decoded by rioxarray (mask_and_scale), the Zarr read raw
    decoded_tif = rioxarray.open_rasterio(tif, mask_and_scale=True)
    assert decoded_tif.dtype.kind == "f"
    np.testing.assert_array_equal(_sr(decoded_tif), reference)
    raw_zarr = xr.open_zarr(store, mask_and_scale=False).reflectance
    assert raw_zarr.dtype == np.uint16
    np.testing.assert_array_equal(_sr(raw_zarr), reference)


def test_cf_scaled_zarr_is_reflectance_and_netcdf_dn(tmp_path, dn_cube, reference):
    """uint16 on disk with ``scale_factor`` 1e-4: decoded values are reflectance, used as they are.
    A netCDF of the DN (int16 with _Unsigned, netCDF3) is DN, like the GeoTIFF."""
    refl = (dn_cube.astype(np.float64) * 1e-4).where(dn_cube != 0).astype(np.float32)
    refl.attrs = {}
    encoding = {"reflectance": {"dtype": "uint16", "scale_factor": 1e-4, "_FillValue": 0}}
    refl.to_dataset(name="reflectance").to_zarr(tmp_path / "scaled.zarr", encoding=encoding)
    scaled = xr.open_zarr(tmp_path / "scaled.zarr").reflectance
    assert float(scaled.max()) < 1
    np.testing.assert_allclose(_sr(scaled), reference, atol=1e-5)
    labelled = dn_cube.assign_coords(band=[1, 2, 3, 4])
    labelled.attrs = {k: v for k, v in labelled.attrs.items() if k != "long_name"}  # netCDF3: no list attrs
    labelled.to_dataset(name="reflectance").to_netcdf(tmp_path / "in.nc", engine="scipy")
    nc = xr.open_dataset(tmp_path / "in.nc", engine="scipy", chunks={}).reflectance
    assert nc.dtype.kind == "f" and np.dtype(nc.encoding["dtype"]).kind == "i"
    np.testing.assert_array_equal(_sr(nc, bands=[1, 2, 3, 4]), reference)


def test_eight_bit_data_needs_a_declared_scale(dn_cube):
    tci = (dn_cube // 20).astype(np.uint8)
    with pytest.raises(errors.InputError, match=r"uint8 values without a declared scale.*scale_factor"):
        tci.opensr.superresolve(**KW)
    declared = tci.assign_attrs(scale_factor=20e-4)
    np.testing.assert_allclose(_sr(declared), _sr((tci.astype(np.uint16) * 20).assign_attrs(nodata=0)), atol=1e-6)


# --------------------------------------------------------------------------- CRS attributes


def _without_crs(cube: xr.DataArray) -> xr.DataArray:
    out = cube.drop_vars("spatial_ref")
    out.encoding.pop("grid_mapping", None)
    out.attrs.pop("grid_mapping", None)
    assert out.rio.crs is None
    return out


def _cf_grid_mapping() -> dict:
    from pyproj import CRS as ProjCRS

    return ProjCRS(CRS).to_cf()


CRS_HOLDERS = {
    "attr spatial_ref (WKT)": lambda c: c.assign_attrs(spatial_ref=_wkt()),
    "attr crs_wkt": lambda c: c.assign_attrs(crs_wkt=_wkt()),
    "attr epsg code": lambda c: c.assign_attrs(epsg=32633),
    "grid_mapping variable 'crs' (CF)": lambda c: c.assign_coords(crs=xr.Variable((), 0, _cf_grid_mapping()))
    .assign_attrs(grid_mapping="crs"),
    "grid_mapping data variable in a Dataset": lambda c: xr.Dataset(
        {"reflectance": c.assign_attrs(grid_mapping="crs"), "crs": xr.Variable((), 0, {"crs_wkt": _wkt()})}),
}


def _wkt() -> str:
    from pyproj import CRS as ProjCRS

    return ProjCRS(CRS).to_wkt()


@pytest.mark.parametrize("holder", list(CRS_HOLDERS))
def test_crs_from_attributes(holder, tmp_path):
    cube = _without_crs(make_cube(8, 8))
    obj = CRS_HOLDERS[holder](cube)
    obj.to_zarr(tmp_path / "c.zarr") if isinstance(obj, xr.Dataset) else obj.to_dataset(name="r").to_zarr(
        tmp_path / "c.zarr")
    for candidate in (obj, xr.open_zarr(tmp_path / "c.zarr")):
        with raise_if_dask_computes():
            ds = candidate.opensr.superresolve(**KW)
        assert ds.rio.crs.to_epsg() == 32633
        assert ds.rio.transform() == Affine(2.5, 0, X0, 0, -2.5, Y0)


def test_unreadable_crs_attribute_is_named():
    cube = _without_crs(make_cube(6, 6)).assign_attrs(crs="UTM-ish")
    with pytest.raises(errors.GridError, match=r"'crs' attribute 'UTM-ish' is not a CRS.*rio.write_crs"):
        cube.opensr.superresolve(**KW)


# --------------------------------------------------------------------------- rotated grids


def test_rotated_geotiff_says_reproject(tmp_path):
    import rasterio

    path = tmp_path / "rotated.tif"
    transform = Affine.translation(X0, Y0) * Affine.rotation(10) * Affine.scale(10, -10)
    with rasterio.open(path, "w", driver="GTiff", width=12, height=12, count=4, dtype="uint16", crs=CRS,
                       transform=transform) as dst:
        dst.write(np.full((4, 12, 12), 1000, np.uint16))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rioxarray/affine deprecation noise
        rotated = rioxarray.open_rasterio(path)
    with pytest.raises(errors.GridError, match=r"rotated or sheared.*rio\.reproject\(") as info:
        rotated.opensr.superresolve(**KW, bands=[1, 2, 3, 4])
    assert "assign" not in str(info.value)
    sheared = make_cube(6, 6).rio.write_transform(Affine(10, 2, X0, 0, -10, Y0))
    with pytest.raises(errors.GridError, match=r"rotated or sheared.*rio\.reproject\("):
        sheared.opensr.superresolve(**KW)


# --------------------------------------------------------------------------- values, checked when computed


def _reflectance(cube: xr.DataArray) -> xr.DataArray:
    out = (cube.astype(np.float64) * 1e-4).astype(np.float32)
    out.attrs = {}
    return out


@pytest.mark.parametrize(("value", "match"), [
    (1e30, r"1 values outside \[-0.1, 2\] \(B04 .* to 1e\+30\).*rio.write_nodata"),
    (-0.5, r"outside \[-0.1, 2\] \(B04 -0.5 to .*obj.where"),
    (2.5, r"outside \[-0.1, 2\].*saturated"),
])
def test_implausible_reflectance_is_an_error_when_computed(value, match):
    cube = _reflectance(make_cube(20, 20)).copy()
    cube[0, 3, 4] = value
    with raise_if_dask_computes():
        ds = cube.chunk({"x": 10}).opensr.superresolve(**KW)  # lazy: nothing checked yet
    with pytest.raises(errors.InputError, match=match):
        ds.sr.compute()


def test_float_dn_is_named_as_dn():
    cube = make_cube(12, 12).astype(np.float32)
    cube.attrs = {}
    with pytest.raises(errors.InputError, match=r"are DN \(reflectance x 10000\).*scale_factor'\] = 1e-4"):
        cube.opensr.superresolve(**KW).sr.compute()


def test_negative_reflectance_is_clipped_with_a_warning():
    cube = _reflectance(make_cube(16, 16))
    dark = cube * 0 - 0.05  # a whole scene below 0: e.g. a BOA offset applied twice
    with pytest.warns(errors.OpenSRWarning, match=r"0 everywhere in \d+ band\(s\).*clipped at 0.*offset"):
        sr = dark.opensr.superresolve(**KW).sr.compute(scheduler="sync")
    assert float(sr.max()) == 0.0
    noisy = cube.copy()
    noisy[:, :4, :4] = -0.02  # dark pixels within the noise: no error, no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error", errors.OpenSRWarning)
        sr = noisy.opensr.superresolve(**KW).sr.compute(scheduler="sync")
    assert float(sr.min()) >= 0 and float(sr.mean()) > 0.01


def test_model_that_overflows_is_a_model_error(tmp_path):
    import torch

    model = load_model("tiny", device="cpu")
    with torch.no_grad():
        model.autoencoder.decoder.conv_in.weight.mul_(1e37)  # finite weights whose activations overflow
    folder = save_model(model, tmp_path / "overflow")
    ds = make_cube(8, 8).opensr.superresolve(**{**KW, "model": str(folder)})
    with pytest.raises(errors.ModelError, match="NaN or infinite values for .* valid pixels.*re-export"):
        ds.sr.compute()


def test_unknown_device_is_a_device_error_naming_the_valid_ones():
    with raise_if_dask_computes(), pytest.raises(errors.DeviceError, match=r"device='potato'.*'cpu', 'cuda'"):
        make_cube(6, 6).opensr.superresolve(**KW, device="potato")


def test_geometry_coords_are_odc_geos_bit_for_bit():
    """The LR GeoBox gives back the input's coordinates, the HR coords are odc-geo's ``xr_coords``, bit for bit."""
    from odc.geo.xr import xr_coords

    from xr_opensr import geometry

    cube = make_cube(7, 5)
    _, y, x, lr = geometry.grid(cube)
    for dim, coord in xr_coords(lr, crs_coord_name=None, dims=(y, x)).items():
        assert coord.values.tobytes() == cube[dim].values.astype(np.float64).tobytes()
    hr = geometry.hr_geobox(lr, 4)
    ours = geometry.hr_coords(hr, y, x)
    for dim, coord in xr_coords(hr, crs_coord_name=None, dims=(y, x)).items():
        assert ours[dim][1].tobytes() == coord.values.tobytes() and ours[dim][2]["units"] == "metre"
    assert hr.shape == (28, 20) and hr.affine.a == 2.5 and geometry.phase20(lr) == (0, 0)
