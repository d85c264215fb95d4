"""Sentinel-2 MSI Level-2A: the one home of what the package knows about the sensor's products.

* The bands (:data:`BANDS`): name, accepted labels (``B04``/``B4``/``red``, ``B8A``/``nir08``, ...),
  native resolution, central wavelength and bandwidth, and the STAC asset keys that hold each band
  (:data:`ASSET_KEYS`, one column per provider naming; which provider uses which column, and where
  it publishes the processing baseline, is in :mod:`xr_opensr.stac_conventions`).
* The DN -> reflectance rule: ``reflectance = (DN + BOA_ADD_OFFSET) / QUANTIFICATION_VALUE`` (ESA's
  L2A product definition; the offset is -1000 DN from processing baseline 04.00 on) and, for a
  user's array, :func:`reflectance_rule`, which reads what the array declares (``scale_factor``,
  ``add_offset``, nodata) and falls back to ``DN / 10000``. :func:`to_reflectance` applies it.
* The scene classification (:data:`SCL_CLASSES`), the band-dimension names the package recognises
  (:data:`BAND_DIM_NAMES`), the bands of the shipped models (:data:`MODEL_BANDS`) and their native
  grid (:data:`GRID_RESOLUTION_M`).

numpy and xarray only: every layer (inputs, STAC, plots, metrics, training) may import it.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr

from .errors import InputError

__all__ = [
    "ASSET_KEYS",
    "BANDS",
    "BAND_ALIASES",
    "BAND_DIM_NAMES",
    "GRID_RESOLUTION_M",
    "GUIDED_BANDS",
    "MODEL_BANDS",
    "QUANTIFICATION",
    "RGB_BANDS",
    "SCL_CLASSES",
    "SCL_MASKED",
    "SR_BANDS",
    "Band",
    "ReflectanceRule",
    "canonical_band",
    "l2a_reflectance",
    "reflectance_rule",
    "to_reflectance",
]


@dataclass(frozen=True)
class Band:
    """One Sentinel-2 MSI band (central wavelength and bandwidth of Sentinel-2A, ESA's spectral
    response functions; Sentinel-2B/C differ by at most 16 nm, in B12).

    Attributes
    ----------
    name : ESA band id, e.g. "B04", "B8A".
    common_name : STAC ``eo:common_name`` style name, e.g. "red", "rededge1", "nir08", "swir16".
    resolution_m : native ground sampling distance in metres (10, 20 or 60).
    wavelength_nm, bandwidth_nm : central wavelength and bandwidth in nm (None for SCL).
    aliases : accepted labels in priority order (matched case-insensitively), the name first.
    asset_keys : STAC asset keys holding the band at its native resolution, tried in order: Earth
        Search v1/c1, stactools and Sinergise ("red"); Earth Search v0 and Planetary Computer
        ("B04"); CDSE ("B04_10m"). Empty for bands L2A products do not carry (B10).
    """

    name: str
    common_name: str
    resolution_m: float
    wavelength_nm: float | None
    bandwidth_nm: float | None
    aliases: tuple[str, ...]
    asset_keys: tuple[str, ...]


def _band(name: str, common: str, res: float, wl: float | None, bw: float | None, *aliases: str,
          cdse: bool = True) -> Band:
    suffix = f"_{int(res)}m"
    keys = (common, name, name + suffix) if cdse else ()
    return Band(name, common, float(res), wl, bw, (name, *aliases), keys)


#: Every band of the MSI, plus SCL (the L2A scene classification, 20 m), by ESA id.
BANDS: dict[str, Band] = {
    b.name: b
    for b in (
        _band("B01", "coastal", 60, 442.7, 21, "B1", "coastal"),
        _band("B02", "blue", 10, 492.4, 66, "B2", "blue"),
        _band("B03", "green", 10, 559.8, 36, "B3", "green"),
        _band("B04", "red", 10, 664.6, 31, "B4", "red"),
        _band("B05", "rededge1", 20, 704.1, 15, "B5", "rededge1"),
        _band("B06", "rededge2", 20, 740.5, 15, "B6", "rededge2"),
        _band("B07", "rededge3", 20, 782.8, 20, "B7", "rededge3"),
        _band("B08", "nir", 10, 832.8, 106, "B8", "nir"),
        _band("B8A", "nir08", 20, 864.7, 21, "nir08"),
        _band("B09", "nir09", 60, 945.1, 20, "B9", "nir09"),
        _band("B10", "cirrus", 60, 1373.5, 31, "cirrus", cdse=False),  # L1C only
        _band("B11", "swir16", 20, 1613.7, 91, "swir16"),
        _band("B12", "swir22", 20, 2202.4, 175, "swir22"),
        _band("SCL", "scl", 20, None, None, "scl"),
    )
}

#: Band id -> accepted labels (priority order, case-insensitive), e.g. "B04": ("B04", "B4", "red").
BAND_ALIASES: dict[str, tuple[str, ...]] = {name: band.aliases for name, band in BANDS.items()}

#: Band id -> STAC asset keys that hold it, tried in order (bands that L2A items carry).
ASSET_KEYS: dict[str, tuple[str, ...]] = {name: band.asset_keys for name, band in BANDS.items() if band.asset_keys}

#: The bands of the shipped models, in the order their networks expect (red, green, blue, NIR).
MODEL_BANDS: tuple[str, ...] = ("B04", "B03", "B02", "B08")

#: The native 20 m bands the package super-resolves, guided by :data:`MODEL_BANDS`, in the order of
#: the 20 m model (``xr_opensr.models.guided``): red edge 1-3, narrow NIR, SWIR 1-2.
GUIDED_BANDS: tuple[str, ...] = ("B05", "B06", "B07", "B8A", "B11", "B12")

#: Every band ``superresolve(bands="all")`` returns: the four 10 m bands, then the six 20 m bands.
SR_BANDS: tuple[str, ...] = MODEL_BANDS + GUIDED_BANDS

#: The true-colour bands (red, green, blue).
RGB_BANDS: tuple[str, ...] = ("B04", "B03", "B02")

#: Names of a dimension that holds bands (matched case-insensitively).
BAND_DIM_NAMES: tuple[str, ...] = ("band", "bands", "channel", "channels", "variable", "wavelength")

#: Pixel size (m) of the grid the models read: the native grid of B02, B03, B04 and B08.
GRID_RESOLUTION_M = 10.0

#: L2A scene classification (SCL) classes.
SCL_CLASSES: dict[int, str] = {
    0: "no data",
    1: "saturated or defective",
    2: "dark area pixels (topographic or cast shadow)",
    3: "cloud shadow",
    4: "vegetation",
    5: "not vegetated",
    6: "water",
    7: "unclassified",
    8: "cloud, medium probability",
    9: "cloud, high probability",
    10: "thin cirrus",
    11: "snow or ice",
}

#: SCL classes that ``xr_opensr.stac.load_s2(mask_clouds=True)`` sets to NaN.
SCL_MASKED: dict[int, str] = {k: SCL_CLASSES[k] for k in (0, 1, 3, 8, 9, 10)}


# --------------------------------------------------------------------------- DN -> reflectance

#: L2A (and L1C) DN per unit reflectance (ESA's QUANTIFICATION_VALUE).
QUANTIFICATION = 10000
#: reflectance per DN when nothing else is declared.
DN_SCALE = 1.0 / QUANTIFICATION
#: the DN value of nodata pixels in ESA products.
NODATA_DN = 0
#: Offset (DN) added to L2A DN from processing baseline 04.00 on (BOA_ADD_OFFSET).
BOA_OFFSET_DN = -1000
BASELINE_WITH_OFFSET = (4, 0)
#: baseline 04.00 went operational (acquisitions from then on carry the offset)
OFFSET_SINCE = "2022-01-25T00:00:00+00:00"
#: attributes (then encoding entries) that declare a nodata value, first found wins; then ``.rio.nodata``
NODATA_KEYS: tuple[str, ...] = ("nodata", "_FillValue", "missing_value")
#: attributes that describe stored values, not reflectance (dropped by :func:`to_reflectance`)
_CONVERSION_ATTRS = (*NODATA_KEYS, "scale_factor", "add_offset", "scales", "offsets")


def l2a_reflectance(dn: xr.DataArray, offset_dn: Any = 0) -> xr.DataArray:
    """ESA's rule for L2A DN whose offset is known: ``(DN + offset_dn) / QUANTIFICATION`` in float32.

    Parameters
    ----------
    dn : integer DN (any dims).
    offset_dn : the BOA_ADD_OFFSET in DN (0, or :data:`BOA_OFFSET_DN` from baseline 04.00 on), a
        scalar or a float32 DataArray that broadcasts against ``dn`` (e.g. one value per time step).

    Returns
    -------
    float32 reflectance; nodata is not masked here (the caller knows its nodata and cloud masks).
    """
    return (dn.astype(np.float32) + offset_dn) / np.float32(QUANTIFICATION)


@dataclass(frozen=True)
class ReflectanceRule:
    """How raw values become reflectance: ``raw * scale + offset`` per band; ``raw == nodata`` -> NaN.

    Attributes
    ----------
    scale, offset : float64 arrays (C,), one value per band, or None (identity).
    nodata : float64 array (C,) of nodata values (NaN: none for that band), or None (none at all).
    """

    scale: np.ndarray | None
    offset: np.ndarray | None
    nodata: np.ndarray | None

    @classmethod
    def stack(cls, rules: Sequence[ReflectanceRule]) -> ReflectanceRule:
        """One rule for bands that come with one rule each (e.g. the variables of a Dataset)."""
        def column(values: list, fill: float) -> np.ndarray | None:
            if all(v is None for v in values):
                return None
            return np.array([fill if v is None else float(v[0]) for v in values])

        return cls(column([r.scale for r in rules], 1.0), column([r.offset for r in rules], 0.0),
                   column([r.nodata for r in rules], np.nan))

    def apply(self, raw: np.ndarray) -> np.ndarray:
        """(..., C, h, w) raw values -> float32 reflectance, NaN at nodata and where not finite.

        The arithmetic of the model's input: float64 ``raw * scale + offset``, then float32.
        """
        raw = np.asarray(raw)
        if self.scale is None and self.offset is None:
            out = raw.astype(np.float32, copy=True)
        else:
            out = raw.astype(np.float64)
            if self.scale is not None:
                out *= self.scale[:, None, None]
            if self.offset is not None:
                out += self.offset[:, None, None]
            out = out.astype(np.float32)
        if self.nodata is not None:
            for band, value in enumerate(self.nodata):
                if not np.isnan(value):
                    out[..., band, :, :][raw[..., band, :, :] == value] = np.nan
        out[~np.isfinite(out)] = np.nan
        return out


def reflectance_rule(obj: xr.DataArray, band_dim: Hashable | None = None,
                     picks: Sequence[int] | None = None) -> ReflectanceRule:
    """The DN -> reflectance rule of a user's array, from its dtype, attrs and encoding.

    ``raw * scale_factor + add_offset`` when the attrs declare a conversion (``scale_factor`` /
    ``add_offset``, or per-band ``scales`` / ``offsets``) other than the identity. Otherwise integer
    data are DN: reflectance = DN / :data:`QUANTIFICATION` (also with the identity 1/0 that rioxarray
    writes for every GeoTIFF, and for floats that CF decoding made from integers on disk without a
    scale, e.g. a Zarr/netCDF of uint16 DN with a ``_FillValue``: ``encoding["dtype"]`` tells); float
    data are reflectance. 8-bit integers need a declared scale (InputError). Nodata: the first of
    :data:`NODATA_KEYS` in the attrs (then the encoding), else ``.rio.nodata``; none for CF-decoded
    scaled data (their fill values are already NaN).

    Parameters
    ----------
    obj : the array (values not read).
    band_dim : its band dimension (per-band ``scales``/``offsets`` have one value per label), or None
        for a single band.
    picks : indices of the bands wanted along ``band_dim`` (default all).

    Returns
    -------
    ReflectanceRule with one scale/offset/nodata per picked band.
    """
    n = 1 if band_dim is None else int(obj.sizes[band_dim])
    picks = list(range(n)) if picks is None else list(picks)
    attrs = obj.attrs
    scale = attrs.get("scale_factor", attrs.get("scales"))
    offset = attrs.get("add_offset", attrs.get("offsets"))
    s = None if scale is None else _per_band(scale, picks, n, "scale_factor")
    o = None if offset is None else _per_band(offset, picks, n, "add_offset")
    value = _nodata_of(obj)
    nodata = None if value is None else np.full(len(picks), value)
    if (s is None or np.all(s == 1.0)) and (o is None or np.all(o == 0.0)):
        disk, scaled = _cf_decoded(obj)
        raw = np.dtype(obj.dtype) if disk is None else disk
        if raw.kind not in "iu" or scaled:
            return ReflectanceRule(None, None, nodata)
        if raw.itemsize == 1:
            raise InputError(
                f"{obj.name or 'the data'!r} holds {raw} values without a declared scale: Sentinel-2 L2A DN "
                "are 16-bit (reflectance x 10000), and 8-bit images are usually true-colour renderings "
                "(TCI), which are not reflectance. Use the L2A bands (e.g. xr_opensr.stac.load_s2), or "
                "declare the scale if these are reflectance x N: obj.attrs['scale_factor'] = 1 / N"
            )
        return ReflectanceRule(np.full(len(picks), DN_SCALE), None, nodata)
    return ReflectanceRule(np.ones(len(picks)) if s is None else s, np.zeros(len(picks)) if o is None else o, nodata)


def to_reflectance(obj: xr.DataArray, band_dim: Hashable | None = None) -> xr.DataArray:
    """Float32 reflectance from stored values by :func:`reflectance_rule`, NaN at nodata and non-finite.

    The same arithmetic as the model's input (float64 ``raw * scale + offset``, then float32).

    Parameters
    ----------
    obj : DataArray of DN or reflectance (lazy stays lazy).
    band_dim : its band dimension when per-band scales are declared (default: ``"band"`` if present).

    Returns
    -------
    float32 DataArray with the same dims, coords and attrs.
    """
    if band_dim is None and "band" in obj.dims:
        band_dim = "band"
    rule = reflectance_rule(obj, band_dim)
    out = obj.astype(np.float32)
    if rule.scale is not None:
        offset = np.zeros_like(rule.scale) if rule.offset is None else rule.offset
        if band_dim is None:
            out = (obj.astype(np.float64) * rule.scale[0] + offset[0]).astype(np.float32)
        else:
            scale_b, offset_b = (xr.DataArray(v, dims=[band_dim]) for v in (rule.scale, offset))
            out = (obj.astype(np.float64) * scale_b + offset_b).astype(np.float32)
    bad = ~np.isfinite(out)
    if rule.nodata is not None:
        nodata = rule.nodata[0] if band_dim is None else xr.DataArray(rule.nodata, dims=[band_dim])
        bad = bad | (obj == nodata)
    out = out.where(~bad)
    out.attrs = {k: v for k, v in obj.attrs.items() if k not in _CONVERSION_ATTRS}
    out.encoding = {}
    return out


def canonical_band(label: Any) -> str | None:
    """'B04', 'b4', 'red', 'B04_10m' (a label or asset key of :data:`BANDS`) -> 'B04'; None if unknown."""
    if not isinstance(label, str):
        return None
    text = label.strip().lower()
    for name, band in BANDS.items():
        if text in {a.lower() for a in (*band.aliases, *band.asset_keys)}:
            return name
    return None


def _per_band(value: Any, picks: Sequence[int], n: int, name: str) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64).reshape(-1)
    if arr.size == 1:
        return np.repeat(arr, len(picks))
    if arr.size != n:
        raise InputError(f"attribute {name!r} has {arr.size} values for {n} bands; give one, or one per band")
    return arr[list(picks)]


def _cf_decoded(obj: xr.DataArray) -> tuple[np.dtype | None, bool]:
    """(on-disk integer dtype, whether a scale/offset was applied) of float data that xarray decoded
    by CF conventions from integers (Zarr, netCDF, ``mask_and_scale=True``); (None, False) otherwise."""
    enc = obj.encoding
    disk = enc.get("dtype")
    try:
        disk = None if disk is None else np.dtype(disk)
    except TypeError:
        disk = None
    if disk is None or disk.kind not in "iu" or np.dtype(obj.dtype).kind != "f":
        return None, False
    scale, offset = enc.get("scale_factor", 1.0), enc.get("add_offset", 0.0)
    scaled = bool(np.any(np.asarray(scale, dtype=float) != 1.0) or np.any(np.asarray(offset, dtype=float) != 0.0))
    return disk, scaled


def _nodata_of(obj: xr.DataArray) -> float | None:
    disk, scaled = _cf_decoded(obj)
    if scaled:  # CF decoding made the fill values NaN; attrs would be in on-disk units
        return None
    # CF-decoded: the encoding's _FillValue is already NaN (and in on-disk units)
    for key in NODATA_KEYS:
        for source in (obj.attrs,) if disk is not None else (obj.attrs, obj.encoding):
            if key in source and source[key] is not None:
                return float(np.asarray(source[key]).reshape(-1)[0])
    try:
        value = obj.rio.nodata
    except Exception:  # no rioxarray, or its edge cases
        value = None
    return None if value is None else float(value)

