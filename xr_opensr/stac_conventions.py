"""How each published Sentinel-2 L2A STAC catalogue names things: data only, no code.

``xr_opensr.stac`` reads this table; nothing else does. Every row was checked against real items
published by the provider (``tests/data/stac_items/``, sources in its README). The band -> asset key
table (``ASSET_KEYS``) and the offset constants (``BOA_OFFSET_DN``, ``BASELINE_WITH_OFFSET``,
``OFFSET_SINCE``) are Sentinel-2 facts and live in :mod:`xr_opensr.sentinel2` (re-exported here): a
band's asset keys sit in the same row as its other names, so adding a band is one line there.

Rules that use it (``xr_opensr.stac.offset_rule``), in this order:

1. an explicit "offset already applied" flag from any key of ``OFFSET_APPLIED_KEYS``:
   true -> offset 0, false -> offset -1000 DN;
2. the processing baseline from the first key of ``BASELINE_KEYS`` present, else from the
   ``_Nxxyy_`` code of a product id (``PRODUCT_ID_KEYS``, then the item id): baseline >= 04.00 ->
   -1000 DN, else 0;
3. only then the acquisition date: on or after ``OFFSET_SINCE`` (2022-01-25, when baseline 04.00
   went operational) -> -1000 DN, else 0.

Reprocessed products (ESA's Collection-1 reprocessing gives 2015-2021 acquisitions baseline 05.00)
need the offset although they were acquired before 2022: rule 2 catches them, rule 3 would not.
"""

from __future__ import annotations

from .sentinel2 import ASSET_KEYS, BASELINE_WITH_OFFSET, BOA_OFFSET_DN, OFFSET_SINCE

__all__ = [
    "ASSET_KEYS", "BASELINE_KEYS", "BASELINE_WITH_OFFSET", "BOA_OFFSET_DN", "OFFSET_APPLIED_KEYS", "OFFSET_SINCE",
    "PRODUCT_ID_KEYS", "PROJ_CRS_KEYS", "PROJ_GRID_KEYS", "PROVIDERS",
]

#: Properties that say whether the provider already removed the -1000 DN offset (a bool).
OFFSET_APPLIED_KEYS: tuple[str, ...] = (
    "earthsearch:boa_offset_applied",  # Earth Search v1 sentinel-2-l2a
    "sentinel:boa_offset_applied",  # Earth Search v0 sentinel-s2-l2a(-cogs)
    "sentinel2:boa_offset_applied",  # older stactools / Sinergise archive items
    "s2:boa_offset_applied",
)

#: Properties that hold the processing baseline ("05.11", "5.0", "N0511"), first found wins.
BASELINE_KEYS: tuple[str, ...] = (
    "s2:processing_baseline",  # Earth Search v1/c1, Planetary Computer, stactools
    "sentinel:processing_baseline",  # Earth Search v0
    "sentinel2:processing_baseline",  # Sinergise archive items (stactools 0.x)
    "processing:version",  # CDSE (processing extension)
)

#: Properties that hold an ESA product id with its "_Nxxyy_" baseline code, tried after
#: BASELINE_KEYS and before the item id itself.
PRODUCT_ID_KEYS: tuple[str, ...] = (
    "s2:product_uri",
    "sentinel:product_id",
    "sentinel2:product_title",
    "s2:product_id",
    "eopf:datastrip_id",  # CDSE: "..._N05.11"
)

#: Projection extension fields that give an asset's grid (on the asset, else on the item's
#: properties): all of PROJ_GRID_KEYS and one of PROJ_CRS_KEYS ("proj:code" since projection v2.0,
#: STAC 1.1; "proj:epsg" before). odc-stac reads them only from items that declare the extension in
#: ``stac_extensions``, which some catalogues leave out although the fields are there.
PROJ_GRID_KEYS: tuple[str, ...] = ("proj:shape", "proj:transform")
PROJ_CRS_KEYS: tuple[str, ...] = ("proj:code", "proj:epsg", "proj:wkt2", "proj:projjson")

#: Each provider as published: the collections, the asset naming (a column of ``sentinel2.ASSET_KEYS``), where
#: the baseline and the applied flag are, and whether its ``raster:bands`` scale/offset can be
#: trusted. ``load_s2`` never uses ``raster:bands``: it reads DN and applies the rules above; the
#: "raster_bands" column records why.
PROVIDERS: dict[str, dict[str, object]] = {
    "earth-search-v0": {
        "collections": ("sentinel-s2-l2a-cogs", "sentinel-s2-l2a"),
        "asset_keys": "B04, SCL",
        "baseline": "sentinel:processing_baseline (later items); _Nxxyy_ in sentinel:product_id",
        "offset_applied": "sentinel:boa_offset_applied (true on items of baseline >= 04.00)",
        "raster_bands": "none published",
    },
    "earth-search-v1": {
        "collections": ("sentinel-2-l2a",),
        "asset_keys": "red, scl (COG); red-jp2, scl-jp2 (ESA JPEG 2000)",
        "baseline": "s2:processing_baseline",
        "offset_applied": "earthsearch:boa_offset_applied",
        "raster_bands": "NOT trusted: offset -0.1 is published although the COGs have it removed",
    },
    "earth-search-c1": {
        "collections": ("sentinel-2-c1-l2a",),
        "asset_keys": "red, scl",
        "baseline": "s2:processing_baseline",
        "offset_applied": "none (ESA DN, offset not removed)",
        "raster_bands": "trusted (scale 0.0001, offset -0.1 from baseline 04.00 on)",
    },
    "planetary-computer": {
        "collections": ("sentinel-2-l2a",),
        "asset_keys": "B04, SCL",
        "baseline": "s2:processing_baseline",
        "offset_applied": "none (ESA DN)",
        "raster_bands": "none published",
    },
    "cdse": {
        "collections": ("sentinel-2-l2a",),
        "asset_keys": "B04_10m, SCL_20m (one asset per band and resolution)",
        "baseline": "processing:version; _Nxx.yy in eopf:datastrip_id",
        "offset_applied": "none (ESA DN)",
        "raster_bands": "trusted (raster:scale / raster:offset on the asset, STAC 1.1)",
    },
    "stactools-sentinel2": {
        "collections": ("(any: the user's own catalogue)",),
        "asset_keys": "red, scl (+ red_20m, ... at other resolutions)",
        "baseline": "s2:processing_baseline; _Nxxyy_ in s2:product_uri",
        "offset_applied": "none (ESA DN)",
        "raster_bands": "trusted (offset -0.1 written from the baseline)",
    },
    "sinergise-archive": {
        "collections": ("sentinel-s2-l2a",),
        "asset_keys": "red, scl (JPEG 2000 in s3://sentinel-s2-l2a)",
        "baseline": "sentinel2:processing_baseline; _Nxxyy_ in sentinel2:product_title",
        "offset_applied": "none (ESA DN)",
        "raster_bands": "trusted (offset -0.1)",
    },
}
