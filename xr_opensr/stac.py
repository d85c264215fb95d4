"""Search and load Sentinel-2 L2A from STAC APIs (pystac-client + odc-stac).

``search`` finds items, least cloudy first; ``load_s2`` turns them into the lazy reflectance cube
that ``ds.opensr.superresolve`` takes as is::

    from xr_opensr import stac

    items = stac.search((9.0, 45.0, 9.1, 45.1), "2024-06", max_cloud=20)
    ds = stac.load_s2(items[:1], bbox=(9.0, 45.0, 9.1, 45.1))   # B04, B03, B02, B08: float32
    sr = ds.opensr.superresolve(samples=4)

Items of Earth Search v0, v1 and Collection-1, the Planetary Computer (pass
``modifier=planetary_computer.sign_inplace``), the Copernicus Data Space (CDSE), Sinergise's archive
and stactools are understood: their asset names, where they put the processing baseline and the
"offset already applied" flag live in one table, ``xr_opensr.stac_conventions``; any other naming
works with ``load_s2(..., assets={"B04": "my_red_key", ...})``. Each item's offset rule is recorded
in the output (``ds.attrs["offset_rules"]``). pystac-client and odc-stac are optional:
``pip install "xr-opensr[stac]"``.
"""

from __future__ import annotations

import importlib
import itertools
import json
import numbers
import re
import warnings
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from datetime import datetime as _datetime
from datetime import timezone
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from . import sentinel2 as _s2
from . import stac_conventions as _conv
from .errors import BandError, InputError

if TYPE_CHECKING:  # pragma: no cover
    import pystac

__all__ = [
    "DEFAULT_BANDS",
    "EARTH_SEARCH",
    "PLANETARY_COMPUTER",
    "S2_BANDS",
    "SCL_MASKED",
    "load_s2",
    "offset_rule",
    "processing_offset",
    "search",
]

EARTH_SEARCH = "https://earth-search.aws.element84.com/v1"
PLANETARY_COMPUTER = "https://planetarycomputer.microsoft.com/api/stac/v1"

#: The bands of the shipped models (the default of ``load_s2``).
DEFAULT_BANDS = _s2.MODEL_BANDS

#: The band table: band name -> asset keys that hold it, tried in order (one column per provider
#: naming: Earth Search v1/c1 and stactools, Earth Search v0 and Planetary Computer, CDSE).
S2_BANDS: dict[str, tuple[str, ...]] = _s2.ASSET_KEYS

#: Scene classification (SCL) classes set to NaN by ``mask_clouds=True``.
SCL_MASKED: dict[int, str] = _s2.SCL_MASKED

QUANTIFICATION = _s2.QUANTIFICATION  # L2A DN per unit reflectance
BOA_OFFSET_DN = _s2.BOA_OFFSET_DN  # added to DN from processing baseline 04.00 on
BASELINE_WITH_OFFSET = _s2.BASELINE_WITH_OFFSET
OFFSET_SINCE = _datetime.fromisoformat(_s2.OFFSET_SINCE)  # baseline 04.00 went operational
_NODATA = _s2.NODATA_DN
_INSTALL = 'pip install "xr-opensr[stac]"'


# ------------------------------------------------------------------------------------ imports
def _require(module: str, needs: str) -> Any:
    """``module``, imported; ImportError ``"<needs>: pip install ..."`` where it is not installed."""
    try:
        return importlib.import_module(module)
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(f"{needs}: {_INSTALL}") from err


# ------------------------------------------------------------------------------------ checks
def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and np.isfinite(value)


def _check_bbox(bbox: Any, arg: str = "bbox") -> tuple[float, float, float, float]:
    """(west, south, east, north) in degrees, or InputError."""
    try:
        values = tuple(float(v) for v in bbox)
    except (TypeError, ValueError):
        values = ()
    if len(values) != 4 or not all(np.isfinite(values)):
        raise InputError(
            f"{arg} must be 4 finite numbers (west, south, east, north) in degrees; got {bbox!r}. "
            f"Example: {arg}=(9.0, 45.0, 9.1, 45.1)"
        )
    west, south, east, north = values
    if not (-180 <= west <= 180 and -180 <= east <= 180 and -90 <= south <= 90 and -90 <= north <= 90):
        raise InputError(
            f"{arg} must be in degrees (EPSG:4326: longitude -180..180, latitude -90..90); got "
            f"{values}. Projected coordinates (metres)? Convert them, e.g. with "
            f"rasterio.warp.transform_bounds(crs, 'EPSG:4326', *bounds)"
        )
    if not (west < east and south < north):
        raise InputError(
            f"{arg} must be (west, south, east, north) with west < east and south < north; got "
            f"{values}. Swap the corners (a box across the antimeridian must be split in two)"
        )
    return values


def _canonical_band(name: Any) -> str:
    """'B04', 'b4', 'red', 'B04_10m' (a label or asset key of a band in S2_BANDS) -> 'B04'; BandError
    for anything else."""
    band = _s2.canonical_band(name)
    if band in S2_BANDS:
        return band
    raise BandError(
        f"unknown Sentinel-2 band {name!r}; expected one of {list(S2_BANDS)} (or an asset key such "
        f"as 'red', 'nir', 'scl'). The model needs bands={DEFAULT_BANDS}"
    )


def _resolve_bands(bands: Any) -> list[str]:
    if isinstance(bands, str) and bands.strip().lower() == "all":
        return list(_s2.SR_BANDS)
    if isinstance(bands, str):
        bands = (bands,)
    try:
        names = [_canonical_band(b) for b in bands]
    except TypeError:
        raise BandError(f"bands must be a sequence of band names, got {bands!r}") from None
    if not names:
        raise BandError(f"bands is empty; pass e.g. bands={DEFAULT_BANDS}")
    return list(dict.fromkeys(names))


def _as_items(items_or_search: Any) -> list[pystac.Item]:
    """A list of pystac Items from an Item, Items, an ItemCollection or a pystac-client search."""
    pystac = _require("pystac", "xr_opensr.stac needs pystac")
    obj = items_or_search
    if isinstance(obj, pystac.Item):
        return [obj]
    if hasattr(obj, "items") and callable(obj.items) and not isinstance(obj, Mapping):
        obj = obj.items()  # pystac_client.ItemSearch
    if isinstance(obj, (str, bytes, Mapping)) or not isinstance(obj, Iterable):
        raise InputError(
            f"load_s2 takes pystac Items (a list, an ItemCollection or a pystac-client search); "
            f"got {type(items_or_search).__name__}. Use xr_opensr.stac.search(bbox, datetime) to find some"
        )
    items = []
    for item in obj:
        if isinstance(item, Mapping):
            item = pystac.Item.from_dict(dict(item))
        if not isinstance(item, pystac.Item):
            raise InputError(f"load_s2 takes pystac Items; got an element of type {type(item).__name__}")
        items.append(item)
    return items


# ------------------------------------------------------------------------------------ offsets
def _parse_baseline(value: Any) -> tuple[int, int] | None:
    """'05.00', '5.0', '5', 'N0500', 'N05.00' -> (5, 0); None when it cannot be read."""
    if value is None or isinstance(value, bool):
        return None
    text = str(value).strip().upper().removeprefix("N")
    match = (re.fullmatch(r"(\d{1,2})\.(\d{1,2})", text) or re.fullmatch(r"(\d{2})(\d{2})", text)
             or re.fullmatch(r"(\d{1,2})()", text))
    return (int(match[1]), int(match[2] or 0)) if match else None


def _product_id_baseline(text: Any) -> tuple[int, int] | None:
    """The baseline of an ESA product/datastrip id: '..._N0511_...' or '..._N05.11' -> (5, 11)."""
    match = re.search(r"_N(\d{2})\.?(\d{2})(?=_|\.SAFE|$)", str(text)) if text else None
    return (int(match[1]), int(match[2])) if match else None


def _flag(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    return None


def _baseline_rule(baseline: tuple[int, int], source: str) -> tuple[int, str]:
    with_offset = baseline >= BASELINE_WITH_OFFSET
    text = f"baseline {baseline[0]:02d}.{baseline[1]:02d} from {source}"
    return (BOA_OFFSET_DN, f"{text} (>= 04.00)") if with_offset else (0, f"{text} (< 04.00)")


def offset_rule(item: pystac.Item) -> tuple[int, str]:
    """The offset (DN) to add to an L2A item's DN before dividing by 10000, and why.

    The first of these decides (the keys are in ``xr_opensr.stac_conventions``):

    1. an "offset already applied" flag (``earthsearch:boa_offset_applied``,
       ``sentinel:boa_offset_applied``, ...) that is true: 0;
    2. the processing baseline (``s2:processing_baseline``, ``sentinel:processing_baseline``,
       ``sentinel2:processing_baseline``, ``processing:version``), else the ``_Nxxyy_`` code of a
       product id (``s2:product_uri``, ``sentinel:product_id``, ..., the item id): -1000 from 04.00 on;
    3. the acquisition date: -1000 on or after 2022-01-25, else 0.

    Returns
    -------
    (int, str)
        The offset in DN (0 or -1000) and the rule that chose it, e.g.
        ``(0, "sentinel:boa_offset_applied = true")``.
    """
    props = item.properties
    for key in _conv.OFFSET_APPLIED_KEYS:
        if _flag(props.get(key)) is True:
            return 0, f"{key} = true"
    for key in _conv.BASELINE_KEYS:
        baseline = _parse_baseline(props.get(key))
        if baseline is not None:
            return _baseline_rule(baseline, f"{key} = {props[key]!r}")
    for key in (*_conv.PRODUCT_ID_KEYS, "id"):
        text = item.id if key == "id" else props.get(key)
        baseline = _product_id_baseline(text)
        if baseline is not None:
            return _baseline_rule(baseline, f"the product id in {key}")
    when = item.datetime or item.common_metadata.start_datetime
    if when is None:
        return 0, "no baseline, flag or date: no offset"
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    after = when >= OFFSET_SINCE
    return (BOA_OFFSET_DN if after else 0), (
        f"no baseline published; acquired {when.date()} {'on or after' if after else 'before'} "
        f"{OFFSET_SINCE.date()}"
    )


def processing_offset(item: pystac.Item) -> int:
    """The offset (DN) to add to an L2A item's DN before dividing by 10000: ``offset_rule(item)[0]``."""
    return offset_rule(item)[0]


# ------------------------------------------------------------------------------------ duplicates
_PRODUCT = re.compile(r"(S2[A-D])_MSIL2A_(\d{8}T\d{6})_N\d{2}\.?\d{2}_R\d{3}_T(\d{2}[A-Z]{3})")


def _scene_key(item: pystac.Item) -> tuple[str, str, str] | None:
    """(satellite, sensing start, MGRS tile) of the ESA product an item was made from, or None."""
    for key in (*_conv.PRODUCT_ID_KEYS, "id"):
        text = item.id if key == "id" else item.properties.get(key)
        match = _PRODUCT.search(str(text)) if text else None
        if match:
            return match[1], match[2], match[3]
    return None


def _drop_duplicates(items: list[pystac.Item]) -> tuple[list[pystac.Item], list[str]]:
    """Keep the first of each set of duplicate acquisitions, in the order given.

    Two items are duplicates when they were made from the same ESA acquisition (satellite, sensing
    start and MGRS tile read from a product id: the same scene in two collections or providers, a
    ``_0_``/``_1_`` re-publication, two processing baselines) and cover the same footprint (bbox
    within 0.01 degree). Partial granules of one acquisition (different footprints) are all kept.
    """
    kept: list[pystac.Item] = []
    dropped: list[str] = []
    for item in items:
        key = _scene_key(item)
        first = next((k for k in kept if key is not None and _scene_key(k) == key and k.bbox and item.bbox
                      and len(k.bbox) == len(item.bbox)  # and the same footprint, within 0.01 degree
                      and all(abs(float(x) - float(y)) <= 0.01 for x, y in zip(k.bbox, item.bbox))), None)
        if first is None:
            kept.append(item)
        else:
            dropped.append(f"{item.collection_id}/{item.id} (duplicate of {first.collection_id}/{first.id})")
    return kept, dropped


# ------------------------------------------------------------------------------------ search
def _check_item_search(client: Any, url: str) -> None:
    """InputError unless the API declares STAC API item search (``/item-search`` conformance)."""
    if _conforms(client, "/item-search"):
        return
    declared = client.get_conforms_to() if hasattr(client, "get_conforms_to") else []
    raise InputError(
        f"the STAC API at {url} does not declare the STAC API item-search conformance class "
        f"(its landing page conformsTo: {declared or 'missing'}), so it cannot be searched with "
        "bbox/datetime/query. This is what an old (pre-1.0) STAC API such as Earth Search v0 "
        f"returns. Use a STAC API 1.0 endpoint (e.g. url=stac.EARTH_SEARCH = {EARTH_SEARCH!r}), "
        "or pass items you already have straight to load_s2"
    )


def _conforms(client: Any, fragment: str) -> bool:
    """Any STAC API version of a conformance class (pystac-client only knows v1.0.x)."""
    try:
        uris = client.get_conforms_to()
    except Exception:  # pragma: no cover - a client without conformance
        return False
    return any(str(uri).endswith(fragment) for uri in uris)


def _cloud_cover(item: pystac.Item) -> float:
    value = item.properties.get("eo:cloud_cover")
    return float(value) if value is not None else float("inf")


def search(
    bbox: Sequence[float],
    datetime: Any,
    *,
    url: str = EARTH_SEARCH,
    collection: str | Sequence[str] = "sentinel-2-l2a",
    max_cloud: float | None = 20,
    limit: int = 100,
    modifier: Callable[[Any], Any] | None = None,
) -> list[pystac.Item]:
    """Sentinel-2 L2A items over ``bbox`` in ``datetime``, least cloudy first.

    Parameters
    ----------
    bbox : (west, south, east, north)
        Area of interest in degrees (EPSG:4326).
    datetime : str, datetime or (start, end)
        A STAC datetime: ``"2024-06"``, ``"2024-06-01/2024-06-30"``, ``(start, end)``.
    url : str
        The STAC API (``EARTH_SEARCH`` by default, or ``PLANETARY_COMPUTER``, or your own).
    collection : str or list of str
        Collection id(s), ``"sentinel-2-l2a"`` on both public APIs.
    max_cloud : float or None
        Keep items with ``eo:cloud_cover <= max_cloud`` (percent); None keeps all.
    limit : int
        Most items fetched; where the API sorts, these are the ``limit`` least cloudy.
    modifier : callable, optional
        pystac-client's item hook, e.g. ``planetary_computer.sign_inplace`` to sign asset URLs.

    Returns
    -------
    list of pystac.Item
        Sorted by cloud cover (least cloudy first), then time and id.

    Raises
    ------
    InputError
        Bad bbox, max_cloud or limit; or no item matched (widen the dates or raise max_cloud).
    """
    bbox = _check_bbox(bbox)
    if max_cloud is not None and not (_is_real(max_cloud) and 0 <= max_cloud <= 100):
        raise InputError(f"max_cloud must be a percentage in [0, 100] or None; got {max_cloud!r}")
    if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 1:
        raise InputError(f"limit must be a positive int; got {limit!r}")
    if datetime is None or datetime == "":
        raise InputError(
            "datetime is required, e.g. '2024-06-01/2024-06-30', '2024-06' or (start, end); got "
            f"{datetime!r}"
        )
    collections = [collection] if isinstance(collection, str) else list(collection)
    pystac_client = _require("pystac_client", "xr_opensr.stac.search needs pystac-client")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # NoConformsTo: reported by _check_item_search, with the fix
        client = pystac_client.Client.open(url, modifier=modifier)
    _check_item_search(client, url)
    kwargs = _search_kwargs(client, collections, bbox, datetime, max_cloud, limit)
    found = _run_search(client, kwargs, datetime)
    if max_cloud is not None:  # also where the API could not filter
        found = [it for it in found if _cloud_cover(it) <= max_cloud]
    if not found:
        cloud = f" with eo:cloud_cover <= {max_cloud}%" if max_cloud is not None else ""
        raise InputError(
            f"no {', '.join(collections)} items at {url} for bbox {list(bbox)} and datetime "
            f"{datetime!r}{cloud}; widen the datetime range, enlarge the bbox or raise max_cloud"
        )
    return sorted(found, key=lambda it: (_cloud_cover(it), str(it.datetime), it.id))


def _search_kwargs(client: Any, collections: list[str], bbox: Sequence[float], datetime: Any,
                   max_cloud: float | None, limit: int) -> dict[str, Any]:
    """Arguments of ``client.search``: the cloud filter and sort order in the forms the API declares."""
    kwargs: dict[str, Any] = {
        "collections": collections,
        "bbox": list(bbox),
        "datetime": datetime,
        "max_items": int(limit),
        "limit": min(int(limit), 100),
    }
    if max_cloud is not None:
        if _conforms(client, "/item-search#query"):
            kwargs["query"] = {"eo:cloud_cover": {"lte": max_cloud}}
        elif _conforms(client, "/item-search#filter"):
            kwargs["filter"] = {"op": "<=", "args": [{"property": "eo:cloud_cover"}, max_cloud]}
            kwargs["filter_lang"] = "cql2-json"
    if _conforms(client, "/item-search#sort"):
        kwargs["sortby"] = [{"field": "properties.eo:cloud_cover", "direction": "asc"}]
    return kwargs


def _run_search(client: Any, kwargs: dict[str, Any], datetime: Any) -> list[pystac.Item]:
    """The items of ``client.search(**kwargs)``; a datetime pystac-client rejects is an InputError."""
    from pystac_client.warnings import DoesNotConformTo

    with warnings.catch_warnings():
        # pystac-client warns for conformance URIs newer than v1.0 that _conforms accepted
        warnings.simplefilter("ignore", DoesNotConformTo)
        try:  # builds the query only; the other arguments were checked above
            item_search = client.search(**kwargs)
        except Exception as err:  # pystac-client raises bare Exception / ValueError here
            raise InputError(
                f"datetime {datetime!r} is not a STAC datetime ({err}); use e.g. "
                f"'2024-06-01/2024-06-30', '2024-06' or (start, end)"
            ) from err
        return list(item_search.items())


# ------------------------------------------------------------------------------------ loading
def _normalise(item: pystac.Item, bands: list[str], mask_clouds: bool,
               assets: Mapping[str, str]) -> pystac.Item:
    """A copy of ``item`` whose assets are exactly ``bands``, keyed by band name (B04, SCL...)."""
    keys = {}
    for band in bands:
        looked = [assets[band]] if band in assets else list(S2_BANDS[band])
        key = next((key for key in looked if key in item.assets), None)
        if key is None:
            where = f"item {item.id!r} (collection {item.collection_id!r})"
            has = f"it has the assets {sorted(item.assets)}"
            if band == "SCL" and mask_clouds:
                raise BandError(
                    f"{where} has no SCL asset (looked for {looked}; {has}), so clouds cannot be "
                    f"masked. Name its SCL asset with assets={{'SCL': '<key>'}}, or pass "
                    f"mask_clouds=False to load without the cloud mask"
                )
            raise BandError(
                f"{where} has no asset for band {band} (looked for {looked}; {has}). If one of "
                f"them holds {band}, name it: load_s2(items, assets={{'{band}': '<key>', ...}}); "
                f"else drop {band} from bands= or the item from the list"
            )
        keys[band] = key
    out = item.clone()
    chosen = {band: out.assets[key] for band, key in keys.items()}
    out.assets.clear()
    for band, asset in chosen.items():
        out.add_asset(band, asset)
    return out


def _has_grid(item: pystac.Item) -> bool:
    """Whether an asset of ``item`` has its grid in projection fields (``proj:shape``, ``proj:transform``
    and a CRS, each on the asset or on the item's properties): what odc-stac needs to place it."""
    def field(asset: Any, key: str) -> Any:
        return asset.extra_fields.get(key, item.properties.get(key))

    return any(all(field(a, k) is not None for k in _conv.PROJ_GRID_KEYS)
               and any(field(a, k) is not None for k in _conv.PROJ_CRS_KEYS) for a in item.assets.values())


def _declare_projection(item: pystac.Item) -> pystac.Item:
    """``item`` (a copy of the caller's) with the projection extension declared in ``stac_extensions``
    when it has projection fields but does not declare it: odc-stac ignores undeclared fields."""
    from pystac.extensions.projection import ProjectionExtension

    declared = ProjectionExtension.has_extension(item) or any(
        uri.startswith("https://stac-extensions.github.io/projection/") for uri in item.stac_extensions)
    if not declared and _has_grid(item):
        ProjectionExtension.add_to(item)
    return item


def _check_grid(items: list[pystac.Item], crs: Any) -> None:
    """Without ``crs``, odc-stac takes the output grid from the items' projection fields: refuse items
    that have none, naming them and the fix (``crs=``, ``resolution=``)."""
    if crs is not None or any(_has_grid(item) for item in items):
        return
    ids = [item.id for item in items]
    raise InputError(
        f"the items {ids} carry no projection information: none of their band assets has "
        f"{' and '.join(_conv.PROJ_GRID_KEYS)} with a CRS ({' or '.join(_conv.PROJ_CRS_KEYS)}), on the asset or in "
        f"the item's properties, so the output grid cannot be guessed. Pass it: load_s2(items, crs='EPSG:32633', "
        f"resolution=10) with the items' UTM zone (crs='utm' picks the zone of the bbox), or add those fields to "
        f"the items"
    )


def _group_key(groupby: Any) -> Callable[[Any, Any, int], Hashable]:
    """odc-stac's groupby as a key function ``(item, parsed, index) -> key``."""
    if callable(groupby):
        return groupby
    if groupby == "solar_day":
        return lambda item, parsed, idx: parsed.solar_date.date()
    if groupby == "time":
        return lambda item, parsed, idx: parsed.nominal_datetime
    if groupby in ("id", None):
        return lambda item, parsed, idx: idx
    if isinstance(groupby, str):
        return lambda item, parsed, idx: item.properties.get(groupby)
    raise InputError(
        f"groupby must be 'solar_day', 'time', 'id', an item property name or a callable "
        f"(item, parsed, index) -> key; got {groupby!r}"
    )


def load_s2(
    items_or_search: Any,
    *,
    bands: Sequence[str] = DEFAULT_BANDS,
    resolution: float = 10,
    chunks: Mapping[str, int] | None = None,
    groupby: Any = "solar_day",
    mask_clouds: bool = True,
    crs: Any = None,
    bbox: Sequence[float] | None = None,
    assets: Mapping[str, str] | None = None,
) -> xr.Dataset:
    """Load Sentinel-2 L2A items lazily as a float32 reflectance cube.

    Each item's DN get its processing-baseline offset (:func:`offset_rule`: -1000 from baseline
    04.00 on, unless the provider removed it) and are divided by 10000; DN 0 (nodata) becomes NaN
    and, with ``mask_clouds``, so do pixels whose SCL class is in ``SCL_MASKED`` (no data,
    saturated, cloud shadow, medium/high probability cloud, cirrus). Nothing is computed.

    Duplicate acquisitions (the same ESA product in two collections or providers, re-published
    sequences, two processing baselines; same footprint) are dropped first, keeping the first one
    in the order given. Items of one group (one solar day by default) are then mosaicked in the
    order given, whatever their offsets: a pixel comes from the first item where it is valid (not
    nodata, not masked). ``search()`` returns the least cloudy first, so that one wins.

    Parameters
    ----------
    items_or_search : pystac.Item, sequence of Items, ItemCollection or pystac_client.ItemSearch
        E.g. the result of :func:`search`; the order is the mosaic priority.
    bands : sequence of str, or "all"
        Band names (``S2_BANDS``: "B04"... or asset keys such as "red", "swir16"); default the 10 m
        bands of the models ("B04", "B03", "B02", "B08"); "all": those and the six 20 m bands that
        ``superresolve(bands="all")`` takes (B05, B06, B07, B8A, B11, B12). Add "SCL" to get the scene
        classification back (uint8). Bands of another native resolution are put on the output grid
        by nearest neighbour: at ``resolution=10`` each 20 m pixel is a 2 x 2 block of equal pixels,
        what ``superresolve`` expects.
    resolution : float
        Pixel size in units of the output CRS (metres for UTM). 10 for the super-resolution model.
    chunks : dict, optional
        Dask chunks, default ``{"x": 512, "y": 512}`` (one time step per chunk).
    groupby : str or callable
        odc-stac grouping: "solar_day" (default), "time", "id", a property name, or a callable.
    mask_clouds : bool
        Set cloud, cirrus, shadow, saturated and nodata pixels (from SCL) to NaN. Needs an SCL asset.
    crs : str or CRS, optional
        Output CRS (e.g. "EPSG:32632", "utm"); default the items' most common CRS, read from their
        projection fields (``proj:shape``, ``proj:transform`` and ``proj:code``/``proj:epsg``, on the
        assets or the item; used also when ``stac_extensions`` does not declare the projection
        extension). Items without them need ``crs`` (and ``resolution``).
    bbox : (west, south, east, north), optional
        Crop to this box in degrees; default the union of the item footprints.
    assets : dict, optional
        Band name -> asset key, for catalogues whose naming ``S2_BANDS`` does not know, e.g.
        ``{"B04": "red_10m", "SCL": "scene_class"}``; other bands keep the table's keys.

    Returns
    -------
    xarray.Dataset
        Variables named as in ``bands``: float32 reflectance, dims (time, y, x), NaN = nodata or
        masked; CRS on the ``spatial_ref`` coordinate. ``attrs["offset_rules"]`` (JSON) lists,
        per time step, each item used with its offset and the rule that chose it;
        ``attrs["duplicates_dropped"]`` (JSON) the duplicates left out.

    Raises
    ------
    InputError
        No items, bad bbox/resolution/groupby/assets, no ``crs`` for items without projection
        fields; BandError for an unknown band, an item
        without the asset of a band (the message lists the item's asset keys), or without an SCL
        asset when ``mask_clouds=True``.
    """
    items = _as_items(items_or_search)
    if not items:
        raise InputError(
            "load_s2 got no items; search(bbox, datetime, ...) found none or the list is empty. "
            "Widen the datetime range or raise max_cloud"
        )
    names = _resolve_bands(bands)
    load_names = [*names, "SCL"] if mask_clouds and "SCL" not in names else list(names)
    if not (_is_real(resolution) and resolution > 0):
        raise InputError(f"resolution must be a positive number (metres for UTM); got {resolution!r}")
    bbox = _check_bbox(bbox) if bbox is not None else None
    if assets is not None and not (isinstance(assets, Mapping) and all(isinstance(v, str) for v in assets.values())):
        raise InputError(f"assets must map band names to asset keys, e.g. {{'B04': 'B04_10m'}}; got {assets!r}")
    asset_map = {_canonical_band(band): key for band, key in (assets or {}).items()}
    base_key = _group_key(groupby)
    odc_stac = _require("odc.stac", "xr_opensr.stac.load_s2 needs odc-stac")
    import rioxarray  # noqa: F401  (registers ds.rio: the result's CRS is ds.rio.crs)

    items, dropped = _drop_duplicates(items)
    normalised = [_declare_projection(_normalise(item, load_names, mask_clouds, asset_map)) for item in items]
    _check_grid(normalised, crs)
    rules = [offset_rule(item) for item in items]
    keys: dict[int, tuple[Hashable, int]] = {}

    def group_key(item: Any, parsed: Any, idx: int) -> tuple[Hashable, int]:
        # one time slice per item, ordered by group then by the caller's order; mosaicked afterwards
        keys[idx] = (base_key(item, parsed, idx), idx)
        return keys[idx]

    # odc.stac.load of DN as written by ESA, whatever the catalogue says (or not) in raster:bands
    stac_cfg = {"*": {"assets": {b: {"data_type": "uint8" if b == "SCL" else "uint16", "nodata": _NODATA}
                                 for b in load_names}, "warnings": "ignore"}}
    given = {k: v for k, v in (("crs", crs), ("bbox", bbox)) if v is not None}
    raw = odc_stac.load(normalised, bands=load_names, groupby=group_key, resolution=resolution,
                        chunks=dict(chunks) if chunks is not None else {"x": 512, "y": 512}, stac_cfg=stac_cfg,
                        resampling="nearest", **given)
    # time slice t holds item slices[t][1] of group slices[t][0] (odc-stac orders the slices by group key)
    slices = sorted(set(keys.values()))
    if len(slices) != raw.sizes["time"]:  # pragma: no cover - would mean odc-stac changed
        raise RuntimeError(f"odc-stac returned {raw.sizes['time']} time slices for {len(slices)} items")
    offset = xr.DataArray(np.array([rules[i][0] for _, i in slices], np.float32), dims="time")
    out = _reflectance(raw, names, offset, mask_clouds)
    groups = [group for group, _ in slices]
    log = _offset_log(out.time.values, groups, [items[i] for _, i in slices], [rules[i] for _, i in slices])
    out = _merge_groups(out, groups)
    out.attrs.update({
        "reflectance": "(DN + processing-baseline offset) / 10000; DN 0 -> NaN",
        "cloud_mask": ("SCL " + ",".join(map(str, SCL_MASKED)) + " -> NaN") if mask_clouds else "none",
        "mosaic": "per time step, the first valid pixel in the order the items were given",
        "offset_rules": json.dumps(log),
        "duplicates_dropped": json.dumps(dropped),
    })
    return out


def _reflectance(raw: xr.Dataset, names: list[str], offset: xr.DataArray, mask_clouds: bool) -> xr.Dataset:
    """(DN + offset) / 10000 per time slice; nodata and (with mask_clouds) SCL classes -> NaN."""
    masked = raw["SCL"].isin(list(SCL_MASKED)) if mask_clouds else None
    variables = {}
    for band in names:
        da = raw[band]
        if band == "SCL":
            variables[band] = da
            continue
        valid = da != _NODATA
        if masked is not None:
            valid = valid & ~masked
        refl = _s2.l2a_reflectance(da, offset).where(valid)
        refl.attrs = {k: v for k, v in da.attrs.items() if k not in (*_s2.NODATA_KEYS, "units")}
        refl.attrs.update(units="1", long_name=f"{band} surface reflectance")
        variables[band] = refl
    return xr.Dataset(variables, coords=raw.coords, attrs=raw.attrs)  # dims (time, y, x)


def _offset_log(times: Any, groups: list[Hashable], items: list, rules: list) -> list[dict[str, Any]]:
    """Per output time step: the items mosaicked into it (in priority order), offsets and rules."""
    log: list[dict[str, Any]] = []
    for i, (group, item, (dn, rule)) in enumerate(zip(groups, items, rules)):
        entry = {"id": item.id, "collection": item.collection_id, "offset_dn": dn, "rule": rule}
        if log and groups[i - 1] == group:
            log[-1]["items"].append(entry)
        else:
            log.append({"time": str(np.datetime_as_string(times[i], unit="s")), "items": [entry]})
    return log


def _merge_groups(ds: xr.Dataset, group_of_slice: list[Hashable]) -> xr.Dataset:
    """Mosaic neighbouring time slices of one group (split only by their offset): first valid wins."""
    runs = [[i for i, _ in run] for _, run in itertools.groupby(enumerate(group_of_slice), key=lambda p: p[1])]
    if len(runs) == len(group_of_slice):
        return ds
    pieces = []
    for run in runs:
        merged = ds.isel(time=[run[0]])
        for i in run[1:]:
            other = ds.isel(time=[i]).assign_coords(time=merged.time)
            merged = xr.Dataset({name: merged[name].where(merged[name] != _NODATA, other[name]) if name == "SCL"
                                 else merged[name].fillna(other[name]) for name in ds.data_vars}, attrs=ds.attrs)
            for name in ds.data_vars:
                merged[name].attrs = ds[name].attrs
        pieces.append(merged)
    return xr.concat(pieces, dim="time", combine_attrs="override")
