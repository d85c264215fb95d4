"""The ``.opensr`` accessor on :class:`xarray.DataArray` and :class:`xarray.Dataset`.

Registered when ``xr_opensr`` is imported; it only stores the object and forwards to
:func:`xr_opensr.core.superresolve`.
"""

from __future__ import annotations

from typing import Any

import xarray as xr

from .core import superresolve
from .options import takes_options

__all__ = ["OpenSRAccessor"]


class OpenSRAccessor:
    """``obj.opensr``: super-resolution of Sentinel-2 cubes (DataArray with a band dim, or a
    Dataset with one variable per band); it knows which bands are natively 20 m (:attr:`bands20`)."""

    def __init__(self, obj: xr.DataArray | xr.Dataset) -> None:
        self._obj = obj

    @property
    def bands20(self) -> list[str]:
        """The native 20 m bands the object holds that ``superresolve`` can take (band ids, e.g. ``["B11"]``),
        found by name as ``superresolve(bands="all")`` finds them."""
        from ._inputs import native20_bands

        return native20_bands(self._obj)

    @takes_options("self")
    def superresolve(self, samples: int = 10, **options: Any) -> xr.Dataset:
        """Lazy 4x super-resolution (10 m and 20 m bands -> 2.5 m) with per-pixel uncertainty.

        ``bands="all"`` (or a list such as ``["B04", "B11"]``) adds the native 20 m bands; the default
        is the four 10 m bands. Returns a Dataset with ``sr`` and ``uncertainty`` (and ``samples``); see
        :func:`xr_opensr.superresolve` for the input conventions, the result and the errors.

        Parameters
        ----------
        {options}
        """
        return superresolve(self._obj, samples, **options)


xr.register_dataarray_accessor("opensr")(OpenSRAccessor)
xr.register_dataset_accessor("opensr")(OpenSRAccessor)
