"""Real multi-date Sentinel-2 stacks for the tests (issue 21: multi-date super-resolution).

A plain module (not a conftest): ``from multidate_data import eolearn_stack, openeo_stack``. The files
are in ``tests/data/multidate/<source>/`` with a README each (source, commit, licence, conversion).

Every function returns an :class:`xarray.DataArray` of float32 reflectance with dims
``(time, band, y, x)``: ``time`` datetime64[ns] (sorted), ``band`` labels such as ``"B04"``, ``y``/``x``
the coordinates of the pixel centres (metres, y decreasing: north up) and the CRS and transform written
with rioxarray. NaN marks nodata.

* :func:`eolearn_stack` -- eo-learn's ``TestEOPatch``: Sentinel-2 **L1C** (top-of-atmosphere), 5 dates
  Jul-Sep 2015 of a 101 x 100 px (~10 m) window in Slovenia (EPSG:32633), bands B02, B03, B04, B08.
  The first two dates (2015-07-31, 2015-08-20) are fully cloudy (eo-learn's cloud coverage 1.0).
* :func:`openeo_stack` -- openEO's example STAC catalog: Sentinel-2 (L2A, offset-free DN / 10000),
  3 dates in June 2023 of a 58 x 73 px 10 m window in Belgium (EPSG:32631), bands B04, B03, B02,
  read with rasterio.
* :func:`openeo_stack_via_load_s2` -- the same files through the library's own STAC loader
  (:func:`xr_opensr.stac.load_s2`, odc-stac on local file hrefs).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import xarray as xr

ROOT = Path(__file__).resolve().parent / "data" / "multidate"
EOLEARN = ROOT / "eolearn"
OPENEO = ROOT / "openeo"

#: Cloud-free dates of :func:`eolearn_stack` (the other two are fully cloudy).
EOLEARN_CLEAR = ("2015-07-11", "2015-08-30", "2015-09-09")
#: The dates of :func:`openeo_stack` (all clear).
OPENEO_DATES = ("2023-06-01", "2023-06-04", "2023-06-06")


def _centres(start: float, stop: float, n: int) -> np.ndarray:
    """Centres of ``n`` equal pixels from edge ``start`` to edge ``stop`` (either direction)."""
    step = (stop - start) / n
    return start + (np.arange(n) + 0.5) * step


def _finish(values: np.ndarray, times, bands, ys, xs, crs: str, attrs: dict) -> xr.DataArray:
    import rioxarray  # noqa: F401  (registers .rio)
    from affine import Affine

    da = xr.DataArray(
        values.astype(np.float32, copy=False),
        dims=("time", "band", "y", "x"),
        coords={"time": np.asarray(times, dtype="datetime64[ns]"), "band": list(bands), "y": ys, "x": xs},
        attrs=attrs,
    )
    da = da.sortby("time").rio.write_crs(crs)
    dx, dy = xs[1] - xs[0], ys[1] - ys[0]
    return da.rio.write_transform(Affine(dx, 0.0, xs[0] - dx / 2, 0.0, dy, ys[0] - dy / 2))


def eolearn_stack(*, clear_only: bool = False) -> xr.DataArray:
    """eo-learn's ``REFERENCE_SCENES`` (5 dates of ``TestEOPatch``) as (time, band, y, x) L1C reflectance.

    Bands B02, B03, B04, B08 (stored as DN = reflectance x 10000, losslessly); grid of the patch's
    bbox (EPSG:32633, 100 columns x 101 rows of 9.995 x 9.997 m: Sentinel Hub resampled the scenes
    to the bbox). ``attrs["cloud_coverage"]`` lists eo-learn's cloud fraction per date (sorted by
    time); ``clear_only=True`` keeps the three cloud-free dates (:data:`EOLEARN_CLEAR`).
    """
    meta = json.loads((EOLEARN / "scenes.json").read_text())
    dn = np.load(EOLEARN / meta["array"])  # (scene, y, x, band) uint16
    values = dn.transpose(0, 3, 1, 2).astype(np.float32) / np.float32(meta["dn_per_reflectance"])
    bbox = json.loads((EOLEARN / "bbox.geojson").read_text())
    ring = np.asarray(bbox["coordinates"][0], dtype=np.float64)
    (west, south), (east, north) = ring.min(axis=0), ring.max(axis=0)
    epsg = bbox["crs"]["properties"]["name"].rsplit(":", 1)[-1]
    ys = _centres(north, south, values.shape[2])
    xs = _centres(west, east, values.shape[3])
    order = np.argsort(np.asarray(meta["timestamps"], dtype="datetime64[ns]"))
    attrs = {
        "source": "sentinel-hub/eo-learn example_data/REFERENCE_SCENES.npy (TestEOPatch)",
        "level": "L1C",
        "cloud_coverage": [meta["cloud_coverage"][i] for i in order],
    }
    da = _finish(values, meta["timestamps"], meta["bands"], ys, xs, f"EPSG:{epsg}", attrs)
    if clear_only:
        keep = [i for i, c in enumerate(attrs["cloud_coverage"]) if c == 0.0]
        da = da.isel(time=keep)
        da.attrs["cloud_coverage"] = [0.0] * len(keep)
    return da


def _openeo_items() -> list[dict]:
    collection = json.loads((OPENEO / "collection.json").read_text())
    return [json.loads((OPENEO / link["href"]).read_text()) for link in collection["links"] if link["rel"] == "item"]


def openeo_stack() -> xr.DataArray:
    """openEO's example STAC catalog (3 dates, B04/B03/B02) as (time, band, y, x) reflectance.

    Each item's single GeoTIFF asset (int16 DN, nodata -32768, band names from ``eo:bands``) is read
    with rasterio; reflectance = DN / 10000 (the values carry no processing-baseline offset: B02 down
    to DN 171); nodata -> NaN.
    """
    import rasterio

    stack, times, bands, ref = [], [], None, None
    for item in _openeo_items():
        (asset,) = item["assets"].values()
        names = [b["name"] for b in asset["eo:bands"]]
        with rasterio.open(OPENEO / asset["href"]) as src:
            dn = src.read().astype(np.float32)
            grid = (src.transform, src.crs.to_string(), src.shape)
            nodata = src.nodata
        if ref is None:
            ref, bands = grid, names
        if grid != ref or names != bands:
            raise ValueError(f"item {item['id']} is not on the grid/bands of the first item")
        if nodata is not None:
            dn[dn == nodata] = np.nan
        stack.append(dn / np.float32(10000))
        times.append(np.datetime64(item["properties"]["datetime"].rstrip("Z"), "ns"))
    transform, crs, (h, w) = ref
    xs = transform.c + (np.arange(w) + 0.5) * transform.a
    ys = transform.f + (np.arange(h) + 0.5) * transform.e
    attrs = {"source": "Open-EO/openeo-geopyspark-driver docker/local_batch_job/example_stac_catalog",
             "level": "L2A"}
    return _finish(np.stack(stack), times, bands, ys, xs, crs, attrs)


def openeo_items() -> list:
    """The openEO items as :class:`pystac.Item` objects that :func:`xr_opensr.stac.load_s2` can load.

    The original items cannot be loaded as they are: each has one 3-band asset (``load_s2`` takes one
    asset per band), no projection fields, no SCL asset, and no baseline or offset flag (so the date
    rule would subtract 1000 DN from these offset-free values). In memory only, each item gets

    * one asset per band, keyed by band name, whose href is GDAL's ``vrt://<tif>?bands=<k>`` view of
      band k of the original GeoTIFF (absolute local path; GDAL >= 3.7);
    * ``proj:epsg``/``proj:shape``/``proj:transform`` read from the GeoTIFF;
    * ``s2:boa_offset_applied = true`` (the DN carry no offset).

    Load with ``load_s2(openeo_items(), bands=["B04", "B03", "B02"], mask_clouds=False)``.
    """
    import pystac
    import rasterio

    items = []
    for raw in _openeo_items():
        item = pystac.Item.from_dict(raw)
        (key, asset) = next(iter(item.assets.items()))
        path = (OPENEO / asset.href).resolve()
        with rasterio.open(path) as src:
            proj = {"proj:epsg": src.crs.to_epsg(), "proj:shape": list(src.shape),
                    "proj:transform": list(src.transform)[:6]}
        names = [b["name"] for b in asset.extra_fields["eo:bands"]]
        item.assets.clear()
        for k, name in enumerate(names, start=1):
            item.add_asset(name, pystac.Asset(
                href=f"vrt://{path}?bands={k}", media_type="image/tiff; application=geotiff", roles=["data"],
                extra_fields={"eo:bands": [{"name": name}], **proj}))
        item.properties["s2:boa_offset_applied"] = True
        items.append(item)
    return items


def openeo_stack_via_load_s2() -> xr.DataArray:
    """:func:`openeo_stack` loaded by the library's STAC loader from :func:`openeo_items` (computed):
    ``load_s2(..., mask_clouds=False, groupby="time")`` -> ``to_array("band")``, dims (time, band, y, x)."""
    from xr_opensr.stac import load_s2

    ds = load_s2(openeo_items(), bands=["B04", "B03", "B02"], mask_clouds=False, groupby="time")
    da = ds.to_array("band").transpose("time", "band", "y", "x").compute()
    return da.assign_coords(time=da.time.values.astype("datetime64[ns]"))
