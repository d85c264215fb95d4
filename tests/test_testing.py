"""xr_opensr.testing: synthetic scenes (realism, seeds, clouds, nodata), georeferenced cubes, the demo cube."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from affine import Affine

from xr_opensr import metrics, testing
from xr_opensr.sentinel2 import SR_BANDS

pytestmark = pytest.mark.filterwarnings("ignore:Use `@` matmul:PendingDeprecationWarning")  # rioxarray + affine 3
HELDOUT_NORTHING = 4_169_000.0  # training.data.HELDOUT_NORTHING (the library does not import training)


def _ndvi(scene: np.ndarray) -> np.ndarray:
    return (scene[3] - scene[0]) / (scene[3] + scene[0])


# --------------------------------------------------------------------------- synthetic_scene


def test_scene_shape_dtype_range_and_determinism():
    a = testing.synthetic_scene((96, 80), seed=3)
    assert a.shape == (4, 96, 80) and a.dtype == np.float32
    assert np.isfinite(a).all() and 0 < a.min() and a.max() <= 1
    np.testing.assert_array_equal(a, testing.synthetic_scene((96, 80), seed=3))
    assert not np.array_equal(a, testing.synthetic_scene((96, 80), seed=4))
    assert not np.array_equal(a, testing.synthetic_scene((96, 80), seed=(3, 1)))


def test_scene_has_realistic_land_cover():
    scenes = np.stack([testing.synthetic_scene((128, 128), seed=s) for s in range(4)])
    red, green, blue, nir = (scenes[:, b] for b in range(4))
    ndvi = (nir - red) / (nir + red)
    vegetation = ndvi > 0.6
    assert vegetation.mean() > 0.25  # fields, grass, forest dominate
    assert 0.02 < red[vegetation].mean() < 0.07 and 0.04 < green[vegetation].mean() < 0.1
    assert (green[vegetation] > red[vegetation]).mean() > 0.9  # the green peak
    assert 0.2 < nir[vegetation].mean() < 0.45
    water = (nir < 0.035) & (blue > nir)
    assert water.any()  # river or pond in some scene
    bright = (red > 0.1) & (ndvi < 0.3)  # bare soil, roofs, roads
    assert bright.any()
    assert float(scenes.std(axis=(2, 3)).mean()) > 0.02  # texture and edges, not flat


def test_scene_clouds_are_bright_and_only_change_cloudy_pixels():
    clear = testing.synthetic_scene((128, 128), seed=1)
    cloudy = testing.synthetic_scene((128, 128), seed=1, clouds=True)
    thick = (cloudy.min(axis=0) > 0.3) & (cloudy.max(axis=0) < 0.6)
    assert 0.1 < thick.mean() < 0.6
    assert (clear.min(axis=0) > 0.3).mean() < 0.01
    unchanged = np.isclose(cloudy, clear).all(axis=0)
    assert 0.2 < unchanged.mean() < 0.9  # clouds and shadows change some pixels, the rest is the same scene


@pytest.mark.parametrize("fraction", [0.1, 0.35])
def test_scene_nodata_fraction(fraction):
    scene = testing.synthetic_scene((64, 64), seed=2, nodata_fraction=fraction)
    nan = np.isnan(scene)
    assert (nan == nan[0]).all()  # all bands at once
    assert nan[0].mean() == pytest.approx(fraction, abs=1 / 64**2)
    np.testing.assert_array_equal(scene[:, ~nan[0]], testing.synthetic_scene((64, 64), seed=2)[:, ~nan[0]])


def test_scene_rejects_bad_arguments():
    with pytest.raises(ValueError, match="nodata_fraction"):
        testing.synthetic_scene((8, 8), nodata_fraction=1.5)
    with pytest.raises(ValueError, match="at least"):
        testing.synthetic_scene((2, 8))


# --------------------------------------------------------------------------- s2_cube


def test_cube_grid_crs_and_attrs():
    cube = testing.s2_cube(12, 10, origin=(600_000.0, 4_200_000.0))
    assert cube.dims == ("band", "y", "x") and cube.dtype == np.uint16
    assert list(cube.band.values) == ["B04", "B03", "B02", "B08"]
    assert cube.rio.crs.to_epsg() == 32618
    assert cube.rio.transform() == Affine(10, 0, 600_000, 0, -10, 4_200_000)
    np.testing.assert_allclose(cube.x.values, 600_005 + 10 * np.arange(10))
    np.testing.assert_allclose(cube.y.values, 4_199_995 - 10 * np.arange(12))
    assert cube.attrs["nodata"] == 0 and cube.attrs["_FillValue"] == 0 and cube.rio.nodata == 0
    assert cube.min() >= 1  # no valid pixel reads as nodata
    assert cube.rio.resolution() == (10.0, -10.0)


def test_cube_is_the_degraded_scene_and_uint16_is_dn():
    ref = testing.synthetic_scene((64, 48), seed=7)
    lr = metrics.area_downsample(metrics.gaussian_filter(ref, testing.PSF_SIGMA_HR), 4)
    flt = testing.s2_cube(16, 12, seed=7, dtype="float32")
    assert flt.dtype == np.float32 and "nodata" not in flt.attrs
    np.testing.assert_allclose(flt.values, lr, rtol=1e-6)
    dn = testing.s2_cube(16, 12, seed=7)
    np.testing.assert_array_equal(dn.values, np.round(lr * 10_000).astype(np.uint16))


def test_cube_nodata_is_zero_dn_or_nan():
    dn = testing.s2_cube(16, 16, seed=1, nodata_fraction=0.3)
    flt = testing.s2_cube(16, 16, seed=1, nodata_fraction=0.3, dtype="float32")
    assert ((dn.values == 0) == np.isnan(flt.values)).all()
    assert 0.25 < np.isnan(flt.values[0]).mean() < 0.45  # blur + 4x4 cells grow the edge a little


def test_cube_time_dataset_chunks_and_determinism():
    a = testing.s2_cube(8, 8, times=3, seed=5, clouds=True)
    assert a.dims == ("time", "band", "y", "x") and a.sizes["time"] == 3
    assert str(a.time.values[1])[:10] == "2024-06-06"
    xr.testing.assert_identical(a, testing.s2_cube(8, 8, times=3, seed=5, clouds=True))
    assert not np.array_equal(a.isel(time=0), a.isel(time=1))  # own clouds and gains per date
    ds = testing.s2_cube(8, 8, times=["2024-01-01", "2024-02-01"], layout="dataset", chunks={"x": 4})
    assert list(ds.data_vars) == ["B04", "B03", "B02", "B08"]
    assert ds.B08.dims == ("time", "y", "x") and ds.B08.chunks == ((2,), (8,), (4, 4))
    assert ds.B04.attrs["nodata"] == 0 and ds.rio.crs.to_epsg() == 32618
    da = testing.s2_cube(8, 8, times=["2024-01-01", "2024-02-01"])
    np.testing.assert_array_equal(ds.to_dataarray("band").transpose("time", "band", "y", "x").values, da.values)


def test_cube_round_trips_through_geotiff(tmp_path):
    import rioxarray

    cube = testing.s2_cube(16, 16, seed=2)
    cube.rio.to_raster(tmp_path / "c.tif")
    back = rioxarray.open_rasterio(tmp_path / "c.tif", mask_and_scale=False)
    np.testing.assert_array_equal(back.values, cube.values)
    assert back.rio.transform() == cube.rio.transform() and back.rio.nodata == 0
    assert back.attrs["long_name"] == ("B04", "B03", "B02", "B08")


def test_cube_rejects_bad_arguments():
    with pytest.raises(ValueError, match="dtype"):
        testing.s2_cube(4, 4, dtype="int8")
    with pytest.raises(ValueError, match="layout"):
        testing.s2_cube(4, 4, layout="table")
    with pytest.raises(ValueError, match="times"):
        testing.s2_cube(4, 4, times=0)


def test_cube_with_20m_bands_on_the_10m_grid():
    ten = testing.s2_cube(21, 19, times=2, clouds=True, nodata_fraction=0.1, bands=SR_BANDS)
    four = testing.s2_cube(21, 19, times=2, clouds=True, nodata_fraction=0.1)
    np.testing.assert_array_equal(ten.values[:, :4], four.values)  # the 10 m bands do not change
    assert list(ten.band.values) == list(SR_BANDS)
    b11 = ten.sel(band="B11").values
    assert (b11[:, 0:20:2, 0:18:2] == b11[:, 1:20:2, 1:18:2]).all()  # 2 x 2 blocks of one 20 m pixel
    assert (b11[:, 1:20:2, 1:18:2] != b11[:, 2:21:2, 2:19:2]).mean() > 0.5  # ... but not across them
    # plausible spectra: vegetation bright in NIR and the red edge, darker in SWIR 2 than SWIR 1
    refl = ten.isel(time=0).where(ten.isel(time=0) > 0).mean(("y", "x")).to_series() / 1e4
    assert refl["B04"] < refl["B05"] < refl["B07"] and refl["B12"] < refl["B11"] < refl["B8A"]
    # an origin at an odd multiple of 10 m: the blocks start at row / column 1
    shifted = testing.s2_cube(6, 6, bands=("red", "swir22"), origin=(500_010.0, 4_400_010.0)).values[1]
    assert (shifted[1:5:2, 1:5:2] == shifted[2:6:2, 2:6:2]).all()
    ds = testing.s2_cube(8, 8, bands=("B8A", "nir"), layout="dataset")
    assert list(ds.data_vars) == ["B8A", "nir"]
    with pytest.raises(ValueError, match="must name bands of"):
        testing.s2_cube(4, 4, bands=("B05", "X"))
    scene = testing.synthetic_scene((32, 32))
    extra = testing.bands20(scene, seed=1)
    assert extra.shape == (6, 32, 32) and extra.dtype == np.float32 and (extra > 0).all()


def test_cubes_are_accepted_by_the_accessor():
    accessor = pytest.importorskip("xr_opensr.accessor")
    del accessor
    for obj in (testing.s2_cube(16, 16), testing.s2_cube(16, 16, layout="dataset", times=2), testing.demo_cube()):
        out = obj.opensr.superresolve(model="tiny", samples=2, steps=1)  # lazy: builds the graph only
        assert out.sr.sizes["y"] == 4 * obj.sizes["y"] and out.sr.sizes["x"] == 4 * obj.sizes["x"]


# --------------------------------------------------------------------------- demo_cube


def test_demo_cube_is_the_shipped_crop_north_of_the_heldout_line():
    cube = testing.demo_cube()
    assert cube.dims == ("band", "y", "x") and cube.shape == (4, 128, 128) and cube.dtype == np.uint16
    assert list(cube.band.values) == ["B04", "B03", "B02", "B08"]
    assert cube.rio.crs.to_epsg() == 32618 and cube.rio.resolution() == (10.0, -10.0)
    assert cube.rio.bounds() == (441_330.0, 4_176_420.0, 442_610.0, 4_177_700.0)
    assert float(cube.y.min()) - 5.0 >= HELDOUT_NORTHING
    assert cube.attrs["_FillValue"] == 0 and int(cube.min()) > 0
    reflectance = cube.values / 10_000
    assert 0.02 < reflectance[0].mean() < 0.2 and reflectance[3].mean() > reflectance[0].mean()  # vegetated
    lazy = testing.demo_cube(chunks={"y": 64, "x": 64})
    assert lazy.chunks == ((4,), (64, 64), (64, 64))
    np.testing.assert_array_equal(lazy.values, cube.values)
