"""The looks of each date for multi-date super-resolution (``superresolve(looks=..., window=...)``).

A multi-date model consumes the core dims ``("look", "band", "y", "x")``: for each date of the input's
``time`` dim, look 0 is that date and looks 1.. the other dates within ``window`` of it, nearest first
(earlier first on a tie), at most ``2 * looks - 1`` of them, so that where some are cloudy or nodata
the model still finds up to ``looks`` valid ones per pixel. Dates with fewer neighbours get NaN looks.
Lazy (dask ``take`` along ``time``); no model and no torch here.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import dask.array as da
import numpy as np
import pandas as pd

from .errors import InputError

__all__ = ["LOOK_DIM", "DEFAULT_LOOKS", "look_table", "gather_looks", "look_times", "time_dim_of", "window_of"]

LOOK_DIM = "look"
#: looks per date when a multi-date model runs with ``looks=None``
DEFAULT_LOOKS = 8


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
