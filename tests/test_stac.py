"""xr_opensr.stac against a real STAC API on 127.0.0.1 (stac-fastapi-pgstac, tests/stac_server.py).

The scenes and the DN they hold are in ``stac_server.SCENES`` / ``scene_dn``; every expected value
here is computed from the DN written, never from the code under test.
"""

from __future__ import annotations

import urllib.request

import numpy as np
import pystac
import pytest
import rasterio
import xarray as xr
from stac_server import (
    COLLECTION_ES,
    COLLECTION_PC,
    SCENES,
    SCL_BARE,
    SCL_SNOW,
    SCL_WATER,
    scene_dn,
)

from xr_opensr import stac
from xr_opensr.errors import BandError, InputError
from xr_opensr.sentinel2 import SR_BANDS

pytestmark = pytest.mark.stac

A = "S2A_32TMR_20240610_0_L2A"  # clear, baseline 05.00, offset applies
E = "S2A_32TMR_20240610_1_L2A"  # same day, next footprint east, offset already applied
CLOUDY = "S2B_32TMR_20240620_0_L2A"  # same footprint as A, 87 % cloud
OLD = "S2A_32TMR_20210615_0_L2A"  # baseline 03.01: no offset
PC = "S2A_MSIL2A_20240610T103629_R008_T32TMR_20240611T000000"  # PC asset names, A's COGs
BBOX_A = SCENES[A].lonlat_bbox(inset=100)  # strictly inside A's footprint
BBOX_E = SCENES[E].lonlat_bbox(inset=100)
JUNE = "2024-06-01/2024-06-30"


def ids(items) -> list[str]:
    return [it.id for it in items]


def upsampled_scl(scene_id: str) -> np.ndarray:
    """SCL (20 m) on the 10 m grid: each class covers 2 x 2 pixels."""
    scl = scene_dn(SCENES[scene_id])["SCL"]
    return np.repeat(np.repeat(scl, 2, axis=0), 2, axis=1)


@pytest.fixture(scope="module")
def items(stac_api) -> dict[str, pystac.Item]:
    """Every item of the catalogue, by id, fetched once through ``search``."""
    everything = stac.search(BBOX_A, "2020-01-01/2025-01-01", url=stac_api.url, max_cloud=None)
    everything += stac.search(BBOX_E, "2024-06-10", url=stac_api.url, max_cloud=None)
    everything += stac.search(BBOX_A, JUNE, url=stac_api.url, collection=COLLECTION_PC)
    return {it.id: it for it in everything}


# --------------------------------------------------------------------------------- search
def test_stac_search_by_bbox(stac_api):
    assert ids(stac.search(BBOX_A, "2024-06-10", url=stac_api.url)) == [A]
    assert ids(stac.search(BBOX_E, "2024-06-10", url=stac_api.url)) == [E]
    both = (BBOX_A[0], BBOX_A[1], BBOX_E[2], BBOX_E[3])
    assert sorted(ids(stac.search(both, "2024-06-10", url=stac_api.url))) == [A, E]


def test_stac_search_by_datetime_and_cloud_least_cloudy_first(stac_api):
    found = stac.search(BBOX_A, "2020-01-01/2025-01-01", url=stac_api.url, max_cloud=100)
    assert ids(found) == [OLD, A, CLOUDY]  # cloud cover 1.0, 3.5, 87
    assert all(isinstance(it, pystac.Item) for it in found)
    assert ids(stac.search(BBOX_A, JUNE, url=stac_api.url, max_cloud=100)) == [A, CLOUDY]
    assert ids(stac.search(BBOX_A, JUNE, url=stac_api.url)) == [A]  # default max_cloud=20
    assert ids(stac.search(BBOX_A, ("2021-06-01", "2021-06-30"), url=stac_api.url)) == [OLD]
    assert ids(stac.search(BBOX_A, "2020-01-01/2025-01-01", url=stac_api.url, limit=1,
                           max_cloud=None)) == [OLD]


def test_stac_search_cql2_filter_when_the_api_has_no_query_extension(stac_api, monkeypatch):
    real = stac._conforms
    monkeypatch.setattr(stac, "_conforms", lambda c, f: f != "/item-search#query" and real(c, f))
    assert ids(stac.search(BBOX_A, JUNE, url=stac_api.url, max_cloud=50)) == [A]


def test_stac_search_errors(stac_api):
    with pytest.raises(InputError, match=r"no sentinel-2-l2a items .* widen the datetime range"):
        stac.search(BBOX_A, "2019-01-01/2019-01-31", url=stac_api.url)
    with pytest.raises(InputError, match=r"4 finite numbers"):
        stac.search((9.0, 45.0, 9.1), JUNE, url=stac_api.url)
    with pytest.raises(InputError, match=r"in degrees .*transform_bounds"):
        stac.search((500000, 4990000, 510000, 5000000), JUNE, url=stac_api.url)
    with pytest.raises(InputError, match=r"west < east and south < north"):
        stac.search((9.1, 45.0, 9.0, 45.1), JUNE, url=stac_api.url)
    with pytest.raises(InputError, match=r"max_cloud must be a percentage"):
        stac.search(BBOX_A, JUNE, url=stac_api.url, max_cloud=120)
    with pytest.raises(InputError, match=r"limit must be a positive int"):
        stac.search(BBOX_A, JUNE, url=stac_api.url, limit=0)
    with pytest.raises(InputError, match=r"'not-a-date' is not a STAC datetime"):
        stac.search(BBOX_A, "not-a-date", url=stac_api.url)


# --------------------------------------------------------------------------------- loading
def test_stac_load_gives_a_lazy_float32_reflectance_cube(items):
    ds = stac.load_s2([items[A]])
    assert list(ds.data_vars) == ["B04", "B03", "B02", "B08"]
    for da in ds.data_vars.values():
        assert da.dims == ("time", "y", "x") and da.dtype == np.float32
        assert da.chunks is not None  # dask-backed, nothing loaded yet
        assert da.attrs["units"] == "1" and "nodata" not in da.attrs
    assert ds.sizes == {"time": 1, "y": 64, "x": 64}
    assert ds.rio.crs.to_epsg() == 32632
    assert float(ds.x[0]) == 500_005 and float(ds.y[0]) == 4_999_995  # pixel centres, 10 m
    assert ds.time.dt.strftime("%Y-%m-%d").values.tolist() == ["2024-06-10"]


@pytest.mark.parametrize("scene_id", [A, OLD, E], ids=["baseline05", "baseline03", "offset-applied"])
def test_stac_load_applies_the_processing_baseline_offset_exactly(items, scene_id):
    ds = stac.load_s2([items[scene_id]], mask_clouds=False).compute()
    offset = {A: -1000, OLD: 0, E: 0}[scene_id]
    for band in ("B04", "B03", "B02", "B08"):
        dn = scene_dn(SCENES[scene_id])[band]
        expected = (dn.astype(np.float32) + np.float32(offset)) / np.float32(10000)
        expected[dn == 0] = np.nan
        np.testing.assert_array_equal(ds[band].values[0], expected)
    b04 = ds.B04.values[0]
    assert b04[0, 0] == pytest.approx((500 + offset) / 1e4)  # negative reflectance is kept
    assert b04[0, 1] == pytest.approx((1000 + offset) / 1e4)


def test_stac_load_nodata_zero_becomes_nan(items):
    ds = stac.load_s2([items[A]], mask_clouds=False).compute()
    dn = scene_dn(SCENES[A])["B04"]
    assert (dn == 0).sum() == 64
    np.testing.assert_array_equal(np.isnan(ds.B04.values[0]), dn == 0)


def test_stac_load_masks_clouds_and_shadows_from_scl(items):
    ds = stac.load_s2([items[A]], bands=("B04", "B08", "SCL")).compute()
    scl = upsampled_scl(A)
    np.testing.assert_array_equal(ds.SCL.values[0], scl)  # SCL on request: raw classes, uint8
    assert ds.SCL.dtype == np.uint8
    dn = scene_dn(SCENES[A])["B04"]
    expected_nan = np.isin(scl, [0, 1, 3, 8, 9, 10]) | (dn == 0)
    np.testing.assert_array_equal(np.isnan(ds.B04.values[0]), expected_nan)
    np.testing.assert_array_equal(np.isnan(ds.B08.values[0]), expected_nan)
    for kept in (SCL_BARE, SCL_WATER, SCL_SNOW):
        assert np.isfinite(ds.B04.values[0][scl == kept]).all()
    for masked in (1, 3, 8, 9, 10):
        assert (scl == masked).any()

    cloudy = stac.load_s2([items[CLOUDY]]).B04.values[0]
    assert np.isnan(cloudy).mean() > 0.9 and np.isfinite(cloudy[:8, :8]).all()


def test_stac_load_mosaics_one_solar_day_with_different_offsets(items):
    ds = stac.load_s2([items[A], items[E]], mask_clouds=False).compute()
    assert ds.sizes == {"time": 1, "y": 64, "x": 128}
    left, right = ds.B04.values[0, :, :64], ds.B04.values[0, :, 64:]
    dn_a, dn_e = scene_dn(SCENES[A])["B04"], scene_dn(SCENES[E])["B04"]
    np.testing.assert_array_equal(left[dn_a > 0], (dn_a[dn_a > 0].astype(np.float32) - 1000) / 10000)
    np.testing.assert_array_equal(right[dn_e > 0], dn_e[dn_e > 0].astype(np.float32) / 10000)
    by_item = stac.load_s2([items[A], items[E]], groupby="id", mask_clouds=False)
    assert by_item.sizes["time"] == 2


def test_stac_load_several_dates_bbox_crop_and_search_object(stac_api, items):
    ds = stac.load_s2([items[CLOUDY], items[A], items[OLD]], bbox=BBOX_A, chunks={"x": 16, "y": 16})
    assert ds.time.dt.year.values.tolist() == [2021, 2024, 2024]  # sorted by time
    assert ds.sizes["y"] < 64 and ds.sizes["x"] < 64 and ds.B04.chunks[1][0] == 16
    import pystac_client

    search = pystac_client.Client.open(stac_api.url).search(collections=[COLLECTION_ES], ids=[A])
    from_search = stac.load_s2(search)
    xr.testing.assert_identical(from_search.compute(), stac.load_s2([items[A]]).compute())


def test_stac_load_planetary_computer_asset_names(items):
    assert {"B04", "B03", "B02", "B08", "SCL"} <= set(items[PC].assets)
    assert "earthsearch:boa_offset_applied" not in items[PC].properties
    pc = stac.load_s2([items[PC]]).compute()
    es = stac.load_s2([items[A]]).compute()
    for band in ("B04", "B03", "B02", "B08"):
        np.testing.assert_array_equal(pc[band].values, es[band].values)
    assert pc.rio.crs == es.rio.crs


def test_stac_processing_offset_rules(items):
    item = items[A].clone()
    props = item.properties
    assert stac.processing_offset(item) == -1000
    for baseline, offset in [("04.00", -1000), ("05.11", -1000), ("03.01", 0), ("02.14", 0),
                             ("N0400", -1000), ("N0301", 0)]:
        props["s2:processing_baseline"] = baseline
        assert stac.processing_offset(item) == offset, baseline
    props["earthsearch:boa_offset_applied"] = True
    props["s2:processing_baseline"] = "05.00"
    assert stac.processing_offset(item) == 0
    del props["earthsearch:boa_offset_applied"], props["s2:processing_baseline"]
    assert stac.processing_offset(item) == -1000  # 2024, no baseline: after 2022-01-25
    assert stac.processing_offset(items[OLD].clone()) == 0


def test_stac_load_errors(items):
    with pytest.raises(BandError, match=r"unknown Sentinel-2 band 'B99'"):
        stac.load_s2([items[A]], bands=("B04", "B99"))
    with pytest.raises(InputError, match=r"got no items"):
        stac.load_s2([])
    with pytest.raises(InputError, match=r"takes pystac Items .* got str"):
        stac.load_s2("S2A_32TMR_20240610_0_L2A")
    with pytest.raises(InputError, match=r"bbox must be"):
        stac.load_s2([items[A]], bbox=(1, 2, 3))
    with pytest.raises(InputError, match=r"resolution must be a positive number"):
        stac.load_s2([items[A]], resolution=0)

    no_scl = items[A].clone()
    del no_scl.assets["scl"]
    with pytest.raises(BandError, match=r"no SCL asset .* mask_clouds=False"):
        stac.load_s2([no_scl])
    assert stac.load_s2([no_scl], mask_clouds=False).sizes["time"] == 1

    no_nir = items[A].clone()
    del no_nir.assets["nir"]
    with pytest.raises(BandError, match=r"no asset for band B08 .*'nir', 'B08'"):
        stac.load_s2([no_nir])


def test_stac_bands_by_asset_key_and_one_band_table():
    assert stac._resolve_bands(["red", "b03", "B02", "nir", "nir"]) == ["B04", "B03", "B02", "B08"]
    assert stac.S2_BANDS["B04"] == ("red", "B04", "B04_10m")
    assert stac.S2_BANDS["SCL"] == ("scl", "SCL", "SCL_20m")


@pytest.mark.parametrize("text, parsed", [("05.00", (5, 0)), ("5.0", (5, 0)), ("5", (5, 0)),
                                          ("N0500", (5, 0)), ("N05.11", (5, 11)), ("04.00", (4, 0)),
                                          ("02.14", (2, 14)), ("", None), ("baseline", None),
                                          (None, None), (True, None)])
def test_stac_parse_baseline(text, parsed):
    assert stac._parse_baseline(text) == parsed


# --------------------------------------------------------------------------------- the server
def test_stac_cog_server_answers_range_requests(stac_api):
    url = f"{stac_api.cog_url}/{A}_B04.tif"
    with urllib.request.urlopen(url) as r:
        whole = r.read()
    request = urllib.request.Request(url, headers={"Range": "bytes=4-15"})
    with urllib.request.urlopen(request) as r:
        assert r.status == 206 and r.headers["Content-Range"] == f"bytes 4-15/{len(whole)}"
        assert r.read() == whole[4:16]
    assert whole[:4] == b"II*\x00"  # a little-endian TIFF
    assert stac_api.http.stats()["range"] >= 1


# --------------------------------------------------------------------------------- the accessor
# The one end-to-end check: a loaded cube goes into ds.opensr.superresolve as is.
def test_stac_load_then_superresolve(items):
    import xr_opensr  # noqa: F401  (registers .opensr)

    ds = stac.load_s2([items[A]], bbox=BBOX_A)
    out = ds.opensr.superresolve(samples=2, model="tiny", steps=2)
    sr = out["sr"]
    assert sr.sizes["y"] == 4 * ds.sizes["y"] and sr.sizes["x"] == 4 * ds.sizes["x"]
    assert sr.sizes["time"] == 1 and sr.rio.crs == ds.rio.crs
    assert abs(float(sr.x[1] - sr.x[0])) == 2.5
    assert np.isfinite(sr.values).mean() > 0.5


# --------------------------------------------------------------------------------- all ten bands
def test_stac_load_all_bands_puts_the_20m_bands_on_the_10m_grid(items):
    ds = stac.load_s2([items[A]], bands="all", mask_clouds=False).compute()
    assert list(ds.data_vars) == list(SR_BANDS) and ds.sizes == {"time": 1, "y": 64, "x": 64}
    for band in ("B05", "B11", "B12"):
        dn = np.repeat(np.repeat(scene_dn(SCENES[A])[band], 2, axis=0), 2, axis=1)  # 20 m -> 2 x 2 pixels
        expected = (dn.astype(np.float32) - np.float32(1000)) / np.float32(10000)
        expected[dn == 0] = np.nan
        np.testing.assert_array_equal(ds[band].values[0], expected)


def test_stac_search_load_all_bands_superresolve_write_cog_and_zarr(stac_api, tmp_path, model20):
    """The ten-band path end to end: search -> load_s2(bands="all") -> superresolve(bands="all") -> files
    whose bands are named, read back equal."""
    import xr_opensr  # noqa: F401  (registers .opensr)
    from xr_opensr import _io

    bbox = SCENES[A].lonlat_bbox(inset=110)  # the grid starts in the middle of a 20 m pixel
    found = stac.search(bbox, "2024-06-10", url=stac_api.url, max_cloud=10)
    ds = stac.load_s2(found, bands="all", bbox=bbox, chunks={"x": 24, "y": 24})
    assert ds.opensr.bands20 == ["B05", "B06", "B07", "B8A", "B11", "B12"]
    assert (float(ds.x[0]), float(ds.y[0])) == (500_115, 4_999_885)  # edges 500110, 4999890: odd multiples of 10
    out = ds.opensr.superresolve(samples=2, model="tiny", steps=2, bands="all", model20=model20)
    assert list(out.band.values) == list(SR_BANDS) and out.sr.sizes["y"] == 4 * ds.sizes["y"]
    result = out.isel(time=0).compute()
    valid = np.isfinite(ds.to_dataarray("band").isel(time=0).values).all(axis=0).repeat(4, 0).repeat(4, 1)
    assert valid.mean() > 0.5
    for name in ("sr", "uncertainty"):  # every band valid where the input is, NaN where it is not
        assert np.isfinite(result[name].values[:, valid]).all() and np.isnan(result[name].values[:, ~valid]).all()
    cog = _io.write_result(result, tmp_path / "sr.tif")
    with rasterio.open(cog[0]) as sr_file, rasterio.open(cog[1]) as unc_file:
        assert sr_file.descriptions == tuple(SR_BANDS) == unc_file.descriptions and sr_file.count == 10
        np.testing.assert_array_equal(sr_file.read(), result.sr.values)
    _io.write_result(out, tmp_path / "sr.zarr")
    back = xr.open_zarr(tmp_path / "sr.zarr")
    assert list(back.band.values) == list(SR_BANDS)
    np.testing.assert_array_equal(back.uncertainty.isel(time=0).values, result.uncertainty.values)
