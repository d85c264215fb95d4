"""Array layout shared by the metric modules: spatial and band dims, float dtypes, the numpy/xarray split.

A metric kernel sees ``(K, N, band, y, x)`` float64 arrays: K groups are kept (the non-core dims of a
DataArray), N items are pooled (every leading axis of a numpy array).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Hashable
from typing import Any

import numpy as np
import xarray as xr

from .sentinel2 import BAND_DIM_NAMES

ArrayLike = Any  # numpy array, anything np.asarray takes, or an xarray.DataArray

_Y_NAMES = ("y", "lat", "latitude", "northing", "row")
_X_NAMES = ("x", "lon", "longitude", "easting", "col")
_BAND_NAMES = BAND_DIM_NAMES


def _apply(kernel: Callable[[np.ndarray, np.ndarray], np.ndarray], pred: ArrayLike, target: ArrayLike, *,
           per_band: bool, name: str, units: str, need_band: bool = False):
    """Run ``kernel`` on (K, N, band, y, x) float64 arrays; K groups are kept, N items pooled.

    ``kernel`` returns (K,) or, with ``per_band``, (K, band).
    """
    if isinstance(pred, xr.DataArray) or isinstance(target, xr.DataArray):
        return _apply_xarray(kernel, pred, target, per_band=per_band, name=name, units=units,
                             need_band=need_band)
    p, t = np.asarray(pred, dtype=np.float64), np.asarray(target, dtype=np.float64)
    if p.shape != t.shape:
        raise ValueError(f"{name}: pred {p.shape} and target {t.shape} must have the same shape")
    if p.ndim < 2 or (need_band and p.ndim < 3):
        want = "(..., band, y, x)" if need_band else "(..., y, x)"
        raise ValueError(f"{name}: expected arrays {want}, got shape {p.shape}")
    if p.ndim == 2:
        p, t = p[None], t[None]
    shape = (1, -1, *p.shape[-3:])
    out = kernel(p.reshape(shape), t.reshape(shape))[0]
    return out if per_band else float(out)


def _apply_xarray(kernel, pred, target, *, per_band, name, units, need_band):
    if not (isinstance(pred, xr.DataArray) and isinstance(target, xr.DataArray)):
        raise TypeError(f"{name}: give two DataArrays or two arrays, got {type(pred).__name__} and "
                        f"{type(target).__name__}")
    y, x = _spatial_dims(pred)
    band = _band_dim(pred)
    if band is None and need_band:
        raise ValueError(f"{name}: the DataArray has no band dim (dims {pred.dims})")
    if set(pred.dims) != set(target.dims):
        raise ValueError(f"{name}: pred dims {pred.dims} and target dims {target.dims} differ")
    core = [d for d in (band, y, x) if d is not None]
    keep = [d for d in pred.dims if d not in core]
    p = pred.transpose(*keep, *core).values.astype(np.float64)
    t = target.transpose(*keep, *core).values.astype(np.float64)
    if p.shape != t.shape:
        raise ValueError(f"{name}: pred {dict(pred.sizes)} and target {dict(target.sizes)} differ in size")
    if band is None:
        p, t = p[..., None, :, :], t[..., None, :, :]
    lead = p.shape[:-3]
    k = int(np.prod(lead)) if lead else 1
    out = kernel(p.reshape(k, 1, *p.shape[-3:]), t.reshape(k, 1, *t.shape[-3:]))
    dims: list[Hashable] = list(keep)
    coords = {d: pred[d] for d in keep if d in pred.coords}
    if per_band:
        out = out.reshape(*lead, -1)
        if band is not None:
            dims.append(band)
            if band in pred.coords:
                coords[band] = pred[band]
        else:
            out = out[..., 0]
    else:
        out = out.reshape(lead)
    return xr.DataArray(out, dims=dims, coords=coords, name=name, attrs={"units": units})


@contextlib.contextmanager
def _quiet():
    """Silence the warnings of empty (all-NaN) reductions: those give NaN, as documented."""
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def _spatial_dims(obj: xr.DataArray) -> tuple[Hashable, Hashable]:
    y = next((d for d in obj.dims if str(d).lower() in _Y_NAMES), None)
    x = next((d for d in obj.dims if str(d).lower() in _X_NAMES), None)
    if y is None or x is None:
        if obj.ndim < 2:
            raise ValueError(f"expected a DataArray with spatial dims (y, x), got dims {obj.dims}")
        y, x = obj.dims[-2], obj.dims[-1]
    return y, x


def _band_dim(obj: xr.DataArray) -> Hashable | None:
    return next((d for d in obj.dims if str(d).lower() in _BAND_NAMES), None)


def _float_array(obj: ArrayLike) -> np.ndarray:
    arr = np.asarray(getattr(obj, "values", obj))
    return arr.astype(np.float64 if arr.dtype == np.float64 else np.float32, copy=False)


def angle_map(p: np.ndarray, t: np.ndarray, axis: int) -> np.ndarray:
    """Angle in degrees between the spectra (along ``axis``) of ``p`` and ``t`` at each pixel.

    ``2 atan2(|u - v|, |u + v|)`` of the unit spectra u, v: accurate near 0 (arccos of the cosine
    is not); NaN where a spectrum has a NaN band or is all zero.
    """
    u = p / np.linalg.norm(p, axis=axis, keepdims=True)
    v = t / np.linalg.norm(t, axis=axis, keepdims=True)
    return np.degrees(2.0 * np.arctan2(np.linalg.norm(u - v, axis=axis), np.linalg.norm(u + v, axis=axis)))
