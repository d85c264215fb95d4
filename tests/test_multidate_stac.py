"""Multi-date super-resolution through the STAC path (issue 21): ``search`` over a date range -> ``load_s2`` ->
``superresolve(..., looks=K)``, against the local STAC API of tests/stac_server.py.

The local catalogue's own scenes are seeded noise, one clear date per footprint: no use for several looks. So
this module adds a small collection of real dates over one place to the running catalogue (as
tests/test_stac_real_items.py adds its items): eo-learn's five Sentinel-2 L1C dates of Jul-Sep 2015 in
Slovenia (``tests/data/multidate/eolearn``: source, commit and MIT licence in its README; Copernicus
Sentinel data 2015), written as COGs into the folder the local COG server serves:

* B02, B03, B04, B08: the stored DN unchanged (uint16, L1C DN = reflectance x 10000), the first 100 of the 101
  rows, on a 10 m grid in EPSG:32633 whose corner is eo-learn's bbox corner rounded to 10 m (eo-learn's
  9.995 x 9.997 m pixels labelled 10 m, as tests/test_multidate.py does: at most ~5 m off, the same for every
  date);
* SCL (20 m): eo-learn's cloud mask (CLM) of those dates is all-cloud or all-clear (README), so SCL is 9 (high
  probability cloud) everywhere on the two cloudy dates and 4 (vegetation) on the three clear ones;
* items in the Earth Search layout (asset keys red, green, ...; ``s2:processing_baseline`` 02.01: no offset),
  ``eo:cloud_cover`` 100 or 0, in their own collection (no other test's search finds them).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import raise_if_dask_computes
from multidate_data import EOLEARN, EOLEARN_CLEAR
from stac_server import COG_TYPE, ES_KEYS, write_cog

import xr_opensr  # noqa: F401  (registers .opensr)
from xr_opensr import stac, superresolve

pytestmark = pytest.mark.stac

COLLECTION = "xr-opensr-test-eolearn-l1c"
EPSG = 32633
BANDS = ("B02", "B03", "B04", "B08")
RANGE = "2015-07-01/2015-09-30"
N = 100  # 10 m pixels per side of the COGs (SCL: 50 at 20 m)
CROP = 400.0  # metres per side of the loaded box, in the middle of the footprint


def _scenes() -> tuple[np.ndarray, list[dict]]:
    meta = json.loads((EOLEARN / "scenes.json").read_text())
    dn = np.load(EOLEARN / meta["array"])  # (scene, y, x, band) uint16
    scenes = [{"datetime": t + "Z", "cloudy": c == 1.0, "index": i}
              for i, (t, c) in enumerate(zip(meta["timestamps"], meta["cloud_coverage"]))]
    assert meta["bands"] == list(BANDS)
    return dn, sorted(scenes, key=lambda s: s["datetime"])


def _corner() -> tuple[float, float]:
    ring = np.asarray(json.loads((EOLEARN / "bbox.geojson").read_text())["coordinates"][0])
    return float(np.round(ring[:, 0].min(), -1)), float(np.round(ring[:, 1].max(), -1))


def _lonlat(left: float, bottom: float, right: float, top: float) -> tuple[float, float, float, float]:
    from rasterio.warp import transform_bounds

    return tuple(transform_bounds(f"EPSG:{EPSG}", "EPSG:4326", left, bottom, right, top))


def _item(scene: dict, base_url: str, x0: float, y0: float) -> dict:
    from rasterio.warp import transform_geom

    day = scene["datetime"][:10].replace("-", "")
    stem = f"eolearn_{day}"
    left, bottom, right, top = x0, y0 - N * 10.0, x0 + N * 10.0, y0
    ring = [[left, top], [right, top], [right, bottom], [left, bottom], [left, top]]
    geometry = transform_geom(f"EPSG:{EPSG}", "EPSG:4326", {"type": "Polygon", "coordinates": [ring]})
    assets = {}
    for band in (*BANDS, "SCL"):
        res = 20.0 if band == "SCL" else 10.0
        asset = {"href": f"{base_url}/{stem}_{band}.tif", "type": COG_TYPE, "roles": ["data"],
                 "proj:shape": [int(N * 10 / res)] * 2, "proj:transform": [res, 0.0, x0, 0.0, -res, y0],
                 "raster:bands": [{"nodata": 0, "data_type": "uint8" if band == "SCL" else "uint16",
                                   "spatial_resolution": res}]}
        if band != "SCL":
            asset["eo:bands"] = [{"name": band, "common_name": ES_KEYS[band]}]
        assets[ES_KEYS[band]] = asset
    return {
        "type": "Feature", "stac_version": "1.0.0", "id": f"S2A_33TVM_{day}_0_L1C_eolearn",
        "collection": COLLECTION, "geometry": geometry, "bbox": list(_lonlat(left, bottom, right, top)),
        "properties": {"datetime": scene["datetime"], "platform": "sentinel-2a", "constellation": "sentinel-2",
                       "eo:cloud_cover": 100.0 if scene["cloudy"] else 0.0, "proj:epsg": EPSG,
                       "s2:processing_baseline": "02.01"},
        "assets": assets, "links": [],
        "stac_extensions": ["https://stac-extensions.github.io/eo/v1.1.0/schema.json",
                            "https://stac-extensions.github.io/projection/v1.1.0/schema.json",
                            "https://stac-extensions.github.io/raster/v1.1.0/schema.json"],
    }


@pytest.fixture(scope="module")
def catalogue(stac_api):
    """The eo-learn dates in the running local catalogue; returns the search box (degrees) and the scenes."""
    from pypgstac.db import PgstacDB
    from pypgstac.load import Loader, Methods

    dn, scenes = _scenes()
    x0, y0 = _corner()
    cogs = stac_api.folder / "cogs"  # the folder the local COG server serves
    items = []
    for scene in scenes:
        day = scene["datetime"][:10].replace("-", "")
        for k, band in enumerate(BANDS):
            write_cog(cogs / f"eolearn_{day}_{band}.tif", np.ascontiguousarray(dn[scene["index"], :N, :N, k]),
                      10.0, x0, y0, epsg=EPSG)
        scl = np.full((N // 2, N // 2), 9 if scene["cloudy"] else 4, np.uint8)
        write_cog(cogs / f"eolearn_{day}_SCL.tif", scl, 20.0, x0, y0, epsg=EPSG)
        items.append(_item(scene, stac_api.cog_url, x0, y0))
    collection = {"type": "Collection", "stac_version": "1.0.0", "id": COLLECTION, "license": "MIT",
                  "description": "eo-learn TestEOPatch Sentinel-2 L1C dates (tests/data/multidate/eolearn)",
                  "links": [], "extent": {"spatial": {"bbox": [list(_lonlat(x0, y0 - N * 10.0, x0 + N * 10.0, y0))]},
                                          "temporal": {"interval": [[scenes[0]["datetime"], scenes[-1]["datetime"]]]}}}
    db = PgstacDB(dsn=stac_api.pg.dsn)
    try:
        loader = Loader(db=db)
        loader.load_collections(iter([collection]), Methods.upsert)
        loader.load_items(iter(items), Methods.upsert)
    finally:
        db.close()
    middle = (x0 + N * 5.0, y0 - N * 5.0)
    box = _lonlat(middle[0] - CROP / 2, middle[1] - CROP / 2, middle[0] + CROP / 2, middle[1] + CROP / 2)
    return box, scenes


@pytest.fixture(scope="module")
def loaded(stac_api, catalogue):
    box, scenes = catalogue
    found = stac.search(box, RANGE, url=stac_api.url, collection=COLLECTION, max_cloud=None)
    assert len(found) == len(scenes) == 5
    ds = stac.load_s2(found, bbox=box)  # SCL masks the two cloudy dates
    return ds, scenes


def test_search_load_superresolve_looks(loaded):
    ds, scenes = loaded
    days = pd.DatetimeIndex(ds.time.values).strftime("%Y-%m-%d").tolist()
    assert days == [s["datetime"][:10] for s in scenes]  # one time step per date, sorted
    assert set(ds.data_vars) >= {"B04", "B03", "B02", "B08"} and 36 <= ds.sizes["x"] <= 42
    with raise_if_dask_computes():
        res = superresolve(ds, 0, looks=3, window="60D")
    assert res.sr.dims == ("time", "band", "y", "x") and res.sizes["time"] == 5
    assert res.sr.shape[-2:] == (4 * ds.sizes["y"], 4 * ds.sizes["x"])
    np.testing.assert_array_equal(res.time.values, ds.time.values)
    # look_time: each date first, then the loaded dates within 60 days (NaT: none)
    lt = res.look_time.values
    np.testing.assert_array_equal(lt[:, 0], ds.time.values)
    assert np.isin(lt[~np.isnat(lt)].astype("datetime64[ns]"), ds.time.values.astype("datetime64[ns]")).all()
    gap = np.abs(lt - lt[:, :1])
    assert (gap[~np.isnat(lt)] <= np.timedelta64(60, "D")).all()
    assert res.look_shift.chunks is not None  # lazy too

    out = res.compute()
    clear = [days.index(d) for d in EOLEARN_CLEAR]
    cloudy = [t for t in range(5) if t not in clear]
    for t in cloudy:  # masked by SCL: nodata
        assert np.isnan(out.sr.values[t]).all() and (out.looks.values[t] == 0).all()
    for t in clear:
        assert np.isfinite(out.sr.values[t]).all() and (out.looks.values[t] >= 1).all()
        # the other clear dates within 60 days register: several looks on most of the window
        many = (out.looks.values[t] >= 2).mean()
        assert many > 0.5, f"{days[t]}: {many:.0%} of the pixels with >= 2 looks"
    # the offsets: the clear looks of a clear date registered, the cloudy ones (all nodata) NaN
    shifts, lt_days = out.look_shift.values, pd.DatetimeIndex(lt.ravel()).strftime("%Y-%m-%d")
    lt_days = np.asarray(lt_days, dtype=object).reshape(lt.shape)
    for t in clear:
        for j in range(1, lt.shape[1]):
            if np.isnat(lt[t, j]):
                assert np.isnan(shifts[t, j]).all()
            elif lt_days[t, j] in EOLEARN_CLEAR:
                assert np.isfinite(shifts[t, j]).all() and np.abs(shifts[t, j]).max() < 1.0
            else:
                assert np.isnan(shifts[t, j]).all()
