"""Compact outputs: reflectance stored as uint16 DN = round(reflectance x 10000), nodata 0.

``superresolve(..., output_dtype="uint16")`` and ``xr-opensr superresolve --dtype uint16`` use it: the
Sentinel-2 L2A convention, half the bytes of float32. The rule, for ``sr``, ``uncertainty`` and
``samples`` alike:

* ``DN = round(x * 10000)`` (round half to even), clipped to ``[1, 65535]``; NaN (nodata) -> 0.
* The variables carry the CF attributes ``scale_factor = 1e-4``, ``add_offset = 0`` and
  ``_FillValue = 0``: xarray (``open_zarr``, ``open_dataset``) and rioxarray
  (``open_rasterio(mask_and_scale=True)``) decode them back to float reflectance with NaN nodata;
  GDAL sees nodata 0 and the scale.
* Lossless to 1e-4: for ``0 <= x <= 6.5535`` the decoded value is within 1e-4 of ``x`` (within
  0.5e-4 from ``x >= 1.5e-4``: values below that are stored as 1 = 0.0001 so that they stay apart
  from nodata — an uncertainty of 0, e.g. ``samples=1``, reads back as 0.0001). Negative values
  (not physical) are stored as 0.0001 too.

float32 (the default) leaves the Dataset unchanged.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

from .errors import InputError

__all__ = ["OUTPUT_DTYPES", "DN_SCALE", "check_output_dtype", "encode", "to_dn"]

#: accepted ``output_dtype`` values (None means float32)
OUTPUT_DTYPES = ("float32", "uint16")
#: reflectance per DN of the uint16 encoding (the Sentinel-2 L2A quantification value 10000)
DN_SCALE = 1e-4
NODATA_DN = 0
_REFLECTANCE_VARS = ("sr", "uncertainty", "samples")


def check_output_dtype(output_dtype: Any) -> str:
    """``None``/``"float32"``/``np.float32`` -> ``"float32"``; ``"uint16"``/``np.uint16`` -> ``"uint16"``."""
    if output_dtype is None:
        return "float32"
    try:
        name = np.dtype(output_dtype).name
    except TypeError:
        name = None
    if name not in OUTPUT_DTYPES:
        raise InputError(
            f"output_dtype must be 'float32' (reflectance, the default) or 'uint16' (DN = reflectance x 10000, "
            f"nodata 0), got {output_dtype!r}"
        )
    return name


def to_dn(x: np.ndarray) -> np.ndarray:
    """Reflectance (float, NaN nodata) -> uint16 DN (see the module docstring for the rule)."""
    x = np.asarray(x, dtype=np.float64)
    dn = np.clip(np.rint(x / DN_SCALE), 1, np.iinfo(np.uint16).max)
    return np.where(np.isnan(x), NODATA_DN, dn).astype(np.uint16)


def encode(ds: xr.Dataset, output_dtype: Any = None) -> xr.Dataset:
    """The result Dataset of ``superresolve`` with its reflectance variables in ``output_dtype`` (lazy)."""
    dtype = check_output_dtype(output_dtype)
    if dtype == "float32":
        return ds
    out = ds.copy()
    for name in _REFLECTANCE_VARS:
        if name not in ds:
            continue
        var = ds[name]
        dn = xr.apply_ufunc(to_dn, var, dask="parallelized", output_dtypes=[np.uint16], keep_attrs=True)
        dn.attrs.update(scale_factor=DN_SCALE, add_offset=0.0, _FillValue=np.uint16(NODATA_DN))
        dn.encoding = {}
        out[name] = dn
    out.attrs["output_dtype"] = dtype
    return out
