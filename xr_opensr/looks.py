"""The looks of each date for multi-date super-resolution (``superresolve(looks=..., window=...)``).

A multi-date model consumes the core dims ``("look", "band", "y", "x")``: for each date of the input's
``time`` dim, look 0 is that date and looks 1.. the other dates within ``window`` of it, nearest first
(earlier first on a tie), at most ``2 * looks - 1`` of them, so that where some are cloudy or nodata
the model still finds up to ``looks`` valid ones per pixel. Dates with fewer neighbours get NaN looks.
Lazy (dask ``take`` along ``time``); no model and no torch here.

:func:`look_shifts` estimates each look's scene-level sub-pixel offset from the date asked for (the
``look_shift`` output of ``superresolve``), lazily, one small task per date.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import dask.array as da
import numpy as np
import pandas as pd

from .errors import InputError

__all__ = ["LOOK_DIM", "DEFAULT_LOOKS", "SHIFT_DIM", "SHIFT_WINDOW", "look_table", "gather_looks", "look_times",
           "look_shifts", "look_shift_attrs", "central_window", "time_dim_of", "window_of"]

LOOK_DIM = "look"
#: looks per date when a multi-date model runs with ``looks=None``
DEFAULT_LOOKS = 8
#: the dim of ``look_shift``'s two components, labelled ``["y", "x"]``
SHIFT_DIM = "shift"
#: the largest side (LR pixels) of the central window on which ``look_shift`` is estimated
SHIFT_WINDOW = 256
#: the Gauss-Newton stopping step (LR pixels) of ``look_shift``'s estimates (a thousandth of a pixel: well
#: below the registration's own accuracy, two steps fewer than its default)
LOOK_SHIFT_TOL = 1e-3


def window_of(name: str, value: Any) -> pd.Timedelta:
    """A positive time window (``"30D"``, ``"12h"``, a ``timedelta``) as a ``pandas.Timedelta``."""
    try:
        window = pd.Timedelta(value)
    except (TypeError, ValueError):
        window = None
    if window is None or pd.isna(window) or window <= pd.Timedelta(0):
        raise InputError(f"{name} must be a positive time span, e.g. '30D' (30 days either side of a date) or "
                         f"'12h', got {value!r}")
    return window


def look_table(times: Any, looks: int, window: pd.Timedelta) -> np.ndarray:
    """(T, L) int64: for each date, the indices of its looks (itself first, then the dates within ``window``
    of it, nearest first, earlier first on a tie; at most ``2 * looks - 1`` others), -1 where it has fewer;
    L is the most any date has (at least 1)."""
    t = pd.DatetimeIndex(pd.to_datetime(np.asarray(times)))
    if t.hasnans:
        raise InputError("multi-date super-resolution needs a time stamp for every date; the time coordinate has "
                         "NaT: drop those dates (obj.dropna('time', subset=...)) or assign their times")
    values = t.as_unit("ns").asi8  # the window is in ns, whatever the time's unit
    rows = []
    for i, ti in enumerate(values):
        dt = np.abs(values - ti)
        others = [j for j in np.lexsort((values, dt)) if j != i and dt[j] <= window.value]
        rows.append([i, *others[: 2 * looks - 1]])
    width = max(len(r) for r in rows)
    return np.array([r + [-1] * (width - len(r)) for r in rows], dtype=np.int64)


def gather_looks(data: da.Array, times: Any, time_axis: int, looks: int, window: pd.Timedelta
                 ) -> tuple[da.Array, np.ndarray]:
    """``data`` (*lead, band, y, x) with ``time`` at lead axis ``time_axis`` -> (*lead, look, band, y, x)
    (look just before band; float32 with NaN for missing looks when there are any) and the look table."""
    table = look_table(times, looks, window)
    n = table.shape[0]
    lead = data.ndim - 3
    parts = []
    for j in range(table.shape[1]):
        idx = table[:, j]
        part = da.take(data, np.where(idx >= 0, idx, np.arange(n)), axis=time_axis)
        missing = idx < 0
        if missing.any():
            shape = [1] * data.ndim
            shape[time_axis] = n
            part = da.where(missing.reshape(shape), np.float32(np.nan), part.astype(np.float32))
        parts.append(part)
    if any(p.dtype != parts[0].dtype for p in parts):
        parts = [p.astype(np.float32) for p in parts]
    return da.stack(parts, axis=lead), table


def central_window(height: int, width: int, size: int = SHIFT_WINDOW) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1): the central window of at most ``size`` x ``size`` pixels of a height x width image."""
    wy, wx = min(height, size), min(width, size)
    y0, x0 = (height - wy) // 2, (width - wx) // 2
    return y0, y0 + wy, x0, x0 + wx


def look_shifts(data: da.Array, times: Any, time_axis: int, looks: int, window: pd.Timedelta, *,
                scale: Any = None, offset: Any = None, nodata: Any = None, size: int = SHIFT_WINDOW) -> da.Array:
    """Each look's scene-level sub-pixel offset from its date, lazily: ``data`` (*lead, band, y, x) raw values
    (``time`` at lead axis ``time_axis``; the bands the model registers) -> (*lead, look, 2) float32 ``(dy, dx)``
    in pixels of ``data`` (the convention of :func:`xr_opensr.registration.estimate_shift` with the date as
    ``ref`` and the look as ``mov``: the look's content is moved by +shift), NaN where the look is missing or
    cannot be registered; look 0 (the date) (0, 0), or NaN where the date has no valid pixel in the window.

    Estimated on the central window of at most ``size`` x ``size`` pixels (:func:`central_window`), on the
    pixels valid in both (raw -> reflectance per band: ``raw * scale + offset``, ``raw == nodata`` and non-finite
    values nodata), one task per date (its window and its looks' windows: memory does not grow with the series);
    the same values whatever the chunking of ``data``."""
    lead = data.ndim - 3
    y0, y1, x0, x1 = central_window(data.shape[-2], data.shape[-1], size)
    crop = data[..., y0:y1, x0:x1]
    per_date = {i: (1 if i < lead else -1) for i in range(data.ndim)}
    gathered, table = gather_looks(crop.rechunk(per_date), times, time_axis, looks, window)
    gathered = gathered.rechunk({i: (1 if i < lead else -1) for i in range(gathered.ndim)})
    conversion = tuple(None if v is None else np.asarray(v, dtype=np.float64) for v in (scale, offset, nodata))
    n_looks = table.shape[1]
    return da.map_blocks(_block_shifts, gathered, conversion=conversion, lead=lead, drop_axis=(lead + 1, lead + 2),
                         chunks=(*gathered.chunks[:lead], (n_looks,), (2,)), dtype=np.float32,
                         meta=np.empty((0,) * (lead + 2), dtype=np.float32), name="opensr-look_shift-"
                         + da.core.tokenize(gathered, conversion))


def _block_shifts(block: np.ndarray, *, conversion: tuple, lead: int) -> np.ndarray:
    """(1.., L, C, h, w) raw looks of one date (look 0 the date) -> (1.., L, 2) float32 shifts (NaN: none)."""
    from ._graph import _to_reflectance
    from .registration import estimate_shift

    shape = block.shape[:lead]
    looks = block.reshape(-1, *block.shape[lead:])  # (n, L, C, h, w), n = 1 per task
    out = np.full((looks.shape[0], looks.shape[1], 2), np.nan, dtype=np.float32)
    for k, raw in enumerate(looks):
        refl = _to_reflectance(raw, *conversion).astype(np.float64)  # (L, C, h, w), NaN nodata
        ref = refl[0]
        valid0 = np.isfinite(ref).all(axis=0)
        if not valid0.any():
            continue
        out[k, 0] = 0.0
        for j in range(1, refl.shape[0]):
            valid = valid0 & np.isfinite(refl[j]).all(axis=0)
            if not valid.any():
                continue
            shift, quality = estimate_shift(ref, refl[j], valid, return_quality=True, tol=LOOK_SHIFT_TOL)
            if quality.ok:
                out[k, j] = shift
    return out.reshape(*shape, *out.shape[1:])


def look_shift_attrs(window: tuple[int, int, int, int]) -> dict[str, Any]:
    """The attrs of ``look_shift`` (JSON/Zarr-serialisable); ``window``: (y0, y1, x0, x1) LR pixels."""
    y0, y1, x0, x1 = window
    return {
        "long_name": "sub-pixel offset (dy, dx) of each look from the date asked for",
        "units": "LR pixels",
        "sign_convention": "content moved by +shift in the look relative to the date asked for: look(y, x) ~ "
                           "gain * date(y - dy, x - dx) + offset per band (xr_opensr.registration.estimate_shift"
                           "(ref=date, mov=look)); dy > 0: the look's features lie further down the rows (south on "
                           "a north-up grid), dx > 0: further along the columns (east); "
                           "shift_image(look, (-dy, -dx)) brings the look onto the date's grid",
        "method": "scene-level estimate: xr_opensr.registration.estimate_shift(..., return_quality=True) of each "
                  "look against the date on the central window of the input (at most "
                  f"{SHIFT_WINDOW} x {SHIFT_WINDOW} LR pixels), on the model's bands and the pixels valid in both; "
                  "the multi-date model uses it for the fusion (with a per-band gain and offset per patch; where it is NaN "
                  "the model registers the look per patch)",
        "window_lr_pixels": [int(y0), int(y1), int(x0), int(x1)],
        "missing": "NaN: no look (fewer dates within the window), no common valid pixel, or the look could not be "
                   "registered (quality not ok: too few valid pixels, no texture, low correlation such as cloud or "
                   "change); look 0 (the date itself) is (0, 0), NaN where the date has no valid pixel in the window",
    }


def look_times(times: Any, table: np.ndarray) -> np.ndarray:
    """(T, L) datetime64 of the looks of each date (NaT where none)."""
    t = np.asarray(pd.to_datetime(np.asarray(times)), dtype="datetime64[ns]")
    return np.where(table >= 0, t[np.maximum(table, 0)], np.datetime64("NaT"))


def time_dim_of(lead_dims: list[Hashable]) -> Hashable:
    """The input's ``time`` dim among its leading dims, or InputError naming the fix."""
    if "time" not in lead_dims:
        raise InputError(f"multi-date super-resolution (looks=...) needs a time dim; the input's leading dims are "
                         f"{list(lead_dims)}: give it a time series (e.g. from xr_opensr.stac.load_s2 over a date range),"
                         " or leave looks=None for single-date super-resolution")
    return "time"
