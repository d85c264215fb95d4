"""Quicklook figures: the 10 m input, the 2.5 m super-resolution and its uncertainty side by side (true
colour, and a false-colour SWIR composite when the 20 m bands were super-resolved).

matplotlib is an optional dependency (``pip install "xr-opensr[plot]"``), imported when a function
here is called.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np
import xarray as xr

from . import sentinel2
from .errors import BandError, InputError

__all__ = ["SWIR_BANDS", "quicklook", "to_reflectance"]

_PLOT_EXTRA = 'pip install "xr-opensr[plot]"'


def _pyplot():
    try:
        import matplotlib
        import matplotlib.pyplot as plt
    except ImportError as err:  # pragma: no cover - exercised by monkeypatching in tests
        raise ImportError(f"xr_opensr.plot needs matplotlib: {_PLOT_EXTRA}") from err
    return matplotlib, plt


def _band_labels(da: xr.DataArray) -> list[str]:
    return [str(b) for b in np.atleast_1d(da["band"].values)] if "band" in da.coords else []


def _as_band_array(obj: xr.DataArray | xr.Dataset, what: str) -> xr.DataArray:
    """A DataArray with a ``band`` dimension from a DataArray or a Dataset of band variables."""
    if isinstance(obj, xr.Dataset):
        names = list(obj.data_vars)
        arr = xr.concat([obj[n] for n in names], dim="band", coords="minimal", compat="override")
        arr = arr.assign_coords(band=[str(n) for n in names])
        arr.attrs = dict(obj[names[0]].attrs) if names else {}
        return arr
    if not isinstance(obj, xr.DataArray):
        raise InputError(f"{what} must be an xarray DataArray or Dataset, got {type(obj).__name__}")
    if "band" not in obj.dims:
        raise BandError(f"{what} has dims {tuple(obj.dims)} and no 'band' dimension; expected (band, y, x)")
    return obj


def _pick_bands(da: xr.DataArray, bands: Sequence[str], what: str) -> xr.DataArray:
    labels = _band_labels(da)
    lower = {lab.lower(): lab for lab in labels}
    chosen = []
    for band in bands:
        names = (band, *sentinel2.BAND_ALIASES.get(str(band).upper(), ()))
        found = next((lower[n.lower()] for n in names if n.lower() in lower), None)
        if found is None:
            raise BandError(
                f"{what} has no band {band!r} (its bands: {labels}); pass bands=(...) naming three of them "
                "for red, green, blue"
            )
        chosen.append(found)
    return da.sel(band=chosen)


def _select_time(da: xr.DataArray, time: Any, what: str) -> xr.DataArray:
    lead = [d for d in da.dims if d not in ("band", "y", "x")]
    for dim in lead:
        if dim == "time" and time is not None:
            da = da.isel(time=int(time)) if isinstance(time, int | np.integer) else da.sel(time=time, method="nearest")
        elif da.sizes[dim] == 1 or dim == "time":
            da = da.isel({dim: 0})
        else:
            raise InputError(f"{what} has a dimension {dim!r} of size {da.sizes[dim]}; select one step first")
    da = da.transpose("band", "y", "x")
    if da.sizes["y"] > 1 and float(da["y"][1] - da["y"][0]) > 0:  # south-up: show north up
        da = da.isel(y=slice(None, None, -1))
    return da


def to_reflectance(da: xr.DataArray) -> xr.DataArray:
    """Float reflectance from stored values, with nodata as NaN (the convention of ``superresolve``).

    The rule of ``superresolve`` (:func:`xr_opensr.sentinel2.to_reflectance`):
    ``value * scale_factor + add_offset`` when the attrs declare a conversion other than the identity;
    otherwise integer data are DN, reflectance = DN / 10000 (the identity 1/0 that rioxarray records
    for every GeoTIFF counts as no conversion). The declared nodata (``nodata``, ``_FillValue``,
    ``missing_value``, ``.rio.nodata``) and non-finite values become NaN.
    """
    return sentinel2.to_reflectance(da)


def _edges(coord: xr.DataArray) -> tuple[float, float]:
    """(first edge, last edge) of a regular axis of pixel centres, in the coordinate's order."""
    values = np.asarray(coord.values, dtype=np.float64)
    step = float(values[1] - values[0]) if values.size > 1 else 0.0
    return values[0] - step / 2, values[-1] + step / 2


def _extent(da: xr.DataArray) -> tuple[float, float, float, float]:
    """imshow extent (left, right, bottom, top) in metres for an image whose row 0 is y[0]."""
    x0, x1 = _edges(da["x"])
    y0, y1 = _edges(da["y"])
    return x0, x1, y1, y0


def _stretch(rgb: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """(3, h, w) -> (h, w, 4) RGBA in [0, 1]; NaN pixels transparent."""
    scaled = (rgb - lo[:, None, None]) / np.where(hi > lo, hi - lo, 1.0)[:, None, None]
    valid = np.all(np.isfinite(scaled), axis=0)
    out = np.zeros(rgb.shape[1:] + (4,), dtype=np.float32)
    out[..., :3] = np.clip(np.nan_to_num(np.moveaxis(scaled, 0, -1)), 0, 1)
    out[..., 3] = valid
    return out


#: the false-colour SWIR composite of the quicklook (red = SWIR 2.2 um, green = narrow NIR, blue = red):
#: vegetation green, bare soil and built-up areas pink to brown, water black, burnt areas red
SWIR_BANDS: tuple[str, ...] = ("B12", "B8A", "B04")


def _has_bands(obj: Any, bands: Sequence[str]) -> bool:
    try:
        _pick_bands(_as_band_array(obj, "obj"), bands, "obj")
    except (BandError, InputError):
        return False
    return True


def quicklook(
    lr: xr.DataArray | xr.Dataset,
    result: xr.Dataset,
    *,
    bands: Sequence[Hashable] = sentinel2.RGB_BANDS,
    swir: bool | None = None,
    swir_bands: Sequence[Hashable] = SWIR_BANDS,
    time: Any = None,
    ax: Sequence[Any] | None = None,
    figsize: tuple[float, float] | None = None,
    robust: tuple[float, float] = (2, 98),
):
    """Plot the 10 m input, the 2.5 m super-resolution and its uncertainty side by side; and below, when
    the 20 m bands were super-resolved, the same for a false-colour SWIR composite (B12, B8A, B04).

    Parameters
    ----------
    lr : the input of ``superresolve``: DataArray ``(band, y, x)`` (optionally ``time``) or Dataset
        with one variable per band; DN (uint16, nodata declared) or float reflectance.
    result : the Dataset returned by ``superresolve`` (``sr`` and ``uncertainty``), computed or
        lazy (only the plotted bands and time step are loaded). Compute it once beforehand
        (``result = result.compute()``) or read it back from disk so the model does not run again.
    bands : red, green, blue band names (S2 ids or common names) for the true-colour images.
    swir : add the row of the false-colour composite ``swir_bands``: None (default) when both ``lr``
        and ``result`` hold those bands (e.g. ``superresolve(bands="all")``) and ``ax`` is None or six Axes.
    swir_bands : the bands shown as red, green, blue in that row (default :data:`SWIR_BANDS`).
    time : time step to show (a label, selected nearest, or an integer position); default the first.
    ax : three matplotlib Axes to draw into (six with the SWIR row: true colour first); a new figure
        is made when None.
    figsize : figure size in inches when ``ax`` is None (default 15 x 5.2 per row).
    robust : lower and upper percentiles of the LR reflectance (per band, NaN ignored) mapped to
        black and full brightness; the same stretch is applied to the super-resolved image.

    Returns
    -------
    matplotlib.figure.Figure
        Axes 1-3: LR (10 m), SR (2.5 m) and uncertainty (mean over the RGB bands of the per-band
        standard deviation, reflectance units, with a colorbar); 4-6 the same for the SWIR composite.
        All share the extent in map coordinates (metres of the CRS).
    """
    _, plt = _pyplot()
    if not isinstance(result, xr.Dataset) or "sr" not in result or "uncertainty" not in result:
        raise InputError("result must be the Dataset returned by .opensr.superresolve() (with 'sr' and 'uncertainty')")
    rows = [tuple(str(b) for b in bands)]
    for row in rows:
        if len(row) != 3:
            raise BandError(f"bands must name 3 bands (red, green, blue), got {row}")
    lo_pct, hi_pct = (float(v) for v in robust)
    if not 0 <= lo_pct < hi_pct <= 100:
        raise InputError(f"robust must be two percentiles 0 <= low < high <= 100, got {robust}")
    swir_row = tuple(str(b) for b in swir_bands)
    if swir is None:
        swir = (ax is None or len(list(ax)) == 6) and _has_bands(lr, swir_row) and _has_bands(result["sr"], swir_row)
    if swir:
        if len(swir_row) != 3:
            raise BandError(f"swir_bands must name 3 bands (red, green, blue), got {swir_row}")
        rows.append(swir_row)

    if ax is None:
        size = figsize or (15.0, 5.2 * len(rows))
        fig, grid = plt.subplots(len(rows), 3, figsize=size, sharex=True, sharey=True, layout="constrained",
                                 squeeze=False)
        axes = [a for row in grid for a in row]
    else:
        axes = list(ax)
        if len(axes) != 3 * len(rows):
            raise InputError(f"ax must be {3 * len(rows)} matplotlib Axes, got {len(axes)}"
                             if swir else f"ax must be three matplotlib Axes, got {len(axes)}")
        fig = axes[0].figure
    for i, row in enumerate(rows):
        extent, crs = _draw_row(axes[3 * i:3 * i + 3], lr, result, row, time, (lo_pct, hi_pct),
                                "RGB" if i == 0 else "SWIR composite")
    crs_text = f", {crs.to_string()}" if crs is not None else ""
    for a in axes:
        a.set_xlim(extent[0], extent[1])
        a.set_ylim(extent[2], extent[3])
        a.set_aspect("equal")
        a.ticklabel_format(style="plain", useOffset=False)
        a.tick_params(axis="x", labelrotation=30)
        a.set_xlabel(f"x (m{crs_text})")
    for a in axes[::3]:
        a.set_ylabel(f"y (m{crs_text})")
    return fig


def _draw_row(axes: Sequence[Any], lr: Any, result: xr.Dataset, bands: tuple[str, ...], time: Any,
              robust: tuple[float, float], what: str) -> tuple[tuple[float, float, float, float], Any]:
    """LR, SR and uncertainty of the composite ``bands`` into three Axes; returns (extent, CRS or None)."""
    lr_rgb = to_reflectance(_select_time(_pick_bands(_as_band_array(lr, "lr"), bands, "lr"), time, "lr"))
    sr_rgb = _select_time(_pick_bands(result["sr"], bands, "result.sr"), time, "result.sr")
    unc = _select_time(_pick_bands(result["uncertainty"], bands, "result.uncertainty"), time, "result.uncertainty")
    lr_np = np.asarray(lr_rgb.values, dtype=np.float32)
    sr_np = np.asarray(sr_rgb.values, dtype=np.float32)
    unc_np = np.asarray(unc.values, dtype=np.float32).mean(axis=0)

    flat = lr_np.reshape(3, -1)
    if not np.isfinite(flat).any():
        raise InputError("the LR image has no valid pixels in the bands to plot (all nodata)")
    with np.errstate(all="ignore"):
        lo = np.nanpercentile(flat, robust[0], axis=1)
        hi = np.nanpercentile(flat, robust[1], axis=1)
    lo, hi = np.nan_to_num(lo), np.nan_to_num(hi, nan=1.0)
    extent = _extent(lr_rgb)

    stamp = ""
    if "time" in lr_rgb.coords and lr_rgb["time"].ndim == 0:
        stamp = f" {np.datetime_as_string(lr_rgb['time'].values, unit='D')}"
    res_lr = abs(float(lr_rgb.x[1] - lr_rgb.x[0])) if lr_rgb.sizes["x"] > 1 else float("nan")
    res_sr = abs(float(sr_rgb.x[1] - sr_rgb.x[0])) if sr_rgb.sizes["x"] > 1 else float("nan")
    model = result.attrs.get("model")
    samples = result.attrs.get("samples")
    rgb_name = "/".join(bands)

    axes[0].imshow(_stretch(lr_np, lo, hi), extent=extent, interpolation="nearest")
    axes[0].set_title(f"input {res_lr:g} m ({rgb_name}){stamp}")
    axes[1].imshow(_stretch(sr_np, lo, hi), extent=_extent(sr_rgb), interpolation="nearest")
    sr_title = f"super-resolved {res_sr:g} m"
    if what != "RGB":
        sr_title += f" ({rgb_name})"
    elif model:
        sr_title += f" (model {model}" + (f", {samples} samples)" if samples else ")")
    axes[1].set_title(sr_title)
    finite = unc_np[np.isfinite(unc_np)]
    vmax = float(np.percentile(finite, 99)) if finite.size else 1.0
    img = axes[2].imshow(
        np.ma.masked_invalid(unc_np), extent=_extent(unc), cmap="magma", vmin=0,
        vmax=vmax if vmax > 0 else None, interpolation="nearest",
    )
    axes[2].set_title(f"uncertainty (mean over {what if what != 'RGB' else 'RGB'})")
    axes[2].figure.colorbar(img, ax=axes[2], shrink=0.85, label="reflectance std")

    crs = None
    try:
        crs = result.rio.crs or lr_rgb.rio.crs
    except Exception:  # no CRS recorded
        crs = None
    return extent, crs
