"""Every grid computation, on odc-geo's ``GeoBox`` (shape + affine + CRS): the LR GeoBox of an input (spatial
dims, CRS, the regular / north-up / 10 m checks), the 4x finer HR GeoBox and its coordinates, the phase of the
Sentinel-2 20 m grid. xarray, numpy, rioxarray, odc-geo and pyproj only: no dask graph, no torch."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Hashable
from typing import Any

import numpy as np
import xarray as xr

from .errors import GridError, InputError
from .sentinel2 import GRID_RESOLUTION_M

__all__ = ["grid", "spatial_dims", "with_crs", "lr_geobox", "hr_geobox", "hr_coords", "phase20", "quiet_affine"]


def grid(obj: Any) -> tuple[xr.DataArray | xr.Dataset, Hashable, Hashable, Any]:
    """(obj with a readable CRS, y dim, x dim, LR ``GeoBox``): the checks that need no model."""
    if not isinstance(obj, xr.DataArray | xr.Dataset):
        raise InputError(f"superresolve needs an xarray DataArray or Dataset, got {type(obj).__name__}; wrap arrays "
                         "with xr.DataArray(..., dims=('band', 'y', 'x')) and write a CRS with .rio.write_crs")
    y_dim, x_dim = spatial_dims(obj)
    obj = with_crs(obj)
    return obj, y_dim, x_dim, lr_geobox(obj, y_dim, x_dim)


def spatial_dims(obj: xr.DataArray | xr.Dataset) -> tuple[Hashable, Hashable]:
    try:
        return obj.rio.y_dim, obj.rio.x_dim
    except Exception as err:  # rioxarray.exceptions.MissingSpatialDimensionError
        raise GridError(f"no spatial dimensions found in dims {tuple(obj.dims)}: expected 'y'/'x' (or "
                        "'latitude'/'longitude'); rename them, e.g. obj.rename({'row': 'y', 'col': 'x'}), "
                        "or call obj.rio.set_spatial_dims(x_dim=..., y_dim=...)") from err


def _axis(obj: xr.DataArray | xr.Dataset, dim: Hashable, which: str) -> tuple[float, float]:
    """(first centre, step) of a spatial axis in metres, checked regular."""
    n = obj.sizes[dim]
    if n == 0:
        raise InputError(f"dimension {dim!r} is empty")
    if dim not in obj.coords and any(c.ndim == 2 and dim in c.dims for c in obj.coords.values()):
        raise GridError(f"dimension {dim!r} has only 2-D coordinates "
                        f"({[k for k, c in obj.coords.items() if c.ndim == 2]}): a curvilinear, rotated or sheared "
                        "grid; reproject it to a north-up 10 m grid first, e.g. obj.rio.reproject(obj.rio.crs, "
                        "resolution=10)")
    if dim not in obj.coords:
        raise GridError(f"dimension {dim!r} has no coordinates: assign the pixel-centre coordinates in metres, "
                        f"e.g. obj.assign_coords({dim}=...) or load with rioxarray/odc-stac")
    values = np.asarray(obj[dim].values)
    if not np.issubdtype(values.dtype, np.number):
        raise GridError(f"coordinate {dim!r} must be numeric (metres), got dtype {values.dtype}")
    values = values.astype(np.float64)
    if n >= 2:
        diffs = np.diff(values)
        step = float(diffs.mean())
        if not np.allclose(diffs, step, rtol=0, atol=1e-4 * max(1.0, abs(step))):
            raise GridError(f"the {dim!r} coordinate is irregular (spacing from {diffs.min():g} to {diffs.max():g} "
                            "m); expected a regular 10 m grid: regrid first, e.g. obj.rio.reproject(obj.rio.crs, "
                            "resolution=10)")
    else:
        with quiet_affine():
            transform = obj.rio.transform(recalc=False)
        step = float(transform.a if which == "x" else transform.e)
        if transform.is_identity or step == 0:
            raise GridError(f"cannot tell the pixel size of {dim!r} from one pixel: write the transform, e.g. "
                            "obj.rio.write_transform(Affine(10, 0, x0, 0, -10, y0))")
    if abs(abs(step) - GRID_RESOLUTION_M) > 1e-3:
        raise GridError(f"the {dim!r} pixel size is {abs(step):g} m; expected {GRID_RESOLUTION_M:g} m (the Sentinel-2 "
                        "10 m bands B02/B03/B04/B08): resample first, e.g. obj.rio.reproject(obj.rio.crs, "
                        "resolution=10) or odc.stac.load(..., resolution=10)")
    return float(values[0]), step


#: attributes that may hold a CRS (WKT, PROJ string, "EPSG:n" or an EPSG code), most specific first
_CRS_ATTRS = ("crs_wkt", "spatial_ref", "crs", "proj:epsg", "epsg_code", "epsg")


def with_crs(obj: xr.DataArray | xr.Dataset) -> xr.DataArray | xr.Dataset:
    """``obj`` with its CRS readable by rioxarray: where ``obj.rio.crs`` does not find it, the CRS is
    taken from a grid-mapping variable (``grid_mapping`` attr/encoding, a ``spatial_ref``/``crs``
    variable: WKT or CF attributes) or from a CRS attribute of the object or its variables."""
    try:
        if obj.rio.crs is not None:
            return obj
    except Exception as err:  # rioxarray parses attrs["crs"]: pyproj/rasterio CRSError
        raise GridError(f"the 'crs' attribute {str(obj.attrs.get('crs'))[:80]!r} is not a CRS ({err}); write the "
                        "right one, e.g. obj.rio.write_crs('EPSG:326NN') (its UTM zone)") from err
    from pyproj import CRS
    from pyproj.exceptions import CRSError

    holders = [obj.encoding.get("grid_mapping"), obj.attrs.get("grid_mapping"), "spatial_ref", "crs"]
    if isinstance(obj, xr.Dataset):
        holders += [v.encoding.get("grid_mapping", v.attrs.get("grid_mapping")) for v in obj.data_vars.values()]
    names = obj.variables if isinstance(obj, xr.Dataset) else obj.coords
    sources = [obj[h].attrs for h in holders if isinstance(h, str) and h in names and obj[h].ndim == 0]
    sources += [obj.attrs] + ([v.attrs for v in obj.data_vars.values()] if isinstance(obj, xr.Dataset) else [])
    for attrs in sources:
        for key in _CRS_ATTRS:
            if isinstance(attrs.get(key), str | int) and not isinstance(attrs[key], bool):
                try:
                    return obj.rio.write_crs(CRS.from_user_input(attrs[key]).to_wkt())
                except CRSError as err:
                    raise GridError(f"the {key!r} attribute {str(attrs[key])[:80]!r} is not a CRS ({err}); write the "
                                    "right one, e.g. obj.rio.write_crs('EPSG:326NN') (its UTM zone)") from err
        if "grid_mapping_name" in attrs:
            with contextlib.suppress(CRSError):
                return obj.rio.write_crs(CRS.from_cf(dict(attrs)).to_wkt())
    return obj


def _check_north_up(obj: xr.DataArray | xr.Dataset) -> None:
    """A rotated or sheared grid (rioxarray keeps it in the transform, with 2-D coordinates) is refused."""
    try:
        with quiet_affine():
            transform = obj.rio.transform(recalc=False)
    except Exception:  # no transform at all: the coordinates decide
        return
    if transform.b != 0 or transform.d != 0:
        raise GridError(f"the grid is rotated or sheared (transform a={transform.a:g} b={transform.b:g} "
                        f"d={transform.d:g} e={transform.e:g}); xr-opensr needs a north-up 10 m grid: reproject it "
                        "first, e.g. obj.rio.reproject(obj.rio.crs, resolution=10)")


@contextlib.contextmanager
def quiet_affine():
    """Silence affine 3's ``PendingDeprecationWarning`` for ``Affine * Affine``, which rioxarray and
    odc-geo raise inside their own code on every call (nothing a user can act on)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Use `@` matmul", PendingDeprecationWarning)
        yield


def hr_geobox(geobox: Any, scale: int) -> Any:
    """The ``scale`` times finer GeoBox of the LR ``geobox`` (each LR pixel split into scale x scale)."""
    with quiet_affine():
        return geobox.zoom_out(1 / scale)


def lr_geobox(obj: xr.DataArray | xr.Dataset, y_dim: Hashable, x_dim: Hashable):
    """The input's 10 m GeoBox from its CRS (projected, metres) and its regular, north-up coordinates."""
    from affine import Affine
    from odc.geo.geobox import GeoBox

    crs = obj.rio.crs
    if crs is None:
        raise GridError("the input has no CRS: write it with obj.rio.write_crs('EPSG:326NN') (its UTM zone), "
                        "or load with odc-stac/rioxarray which set it")
    if not crs.is_projected:
        raise GridError(f"the CRS {crs.to_string()} is geographic (degrees); expected a projected CRS in metres: "
                        "reproject, e.g. obj.rio.reproject(obj.rio.estimate_utm_crs(), resolution=10)")
    units = (crs.linear_units or "").lower()
    if units not in ("metre", "meter", "m", "metres", "meters"):
        raise GridError(f"the CRS {crs.to_string()} has units {units!r}; expected metres (e.g. UTM)")
    _check_north_up(obj)
    y0, dy = _axis(obj, y_dim, "y")
    x0, dx = _axis(obj, x_dim, "x")
    affine = Affine(dx, 0.0, x0 - dx / 2, 0.0, dy, y0 - dy / 2)
    return GeoBox((obj.sizes[y_dim], obj.sizes[x_dim]), affine, crs.to_wkt())


def phase20(geobox: Any) -> tuple[int, int]:
    """(row, column) of the first 10 m pixel within the Sentinel-2 20 m grid, 0 or 1 each.

    The 20 m pixels of Sentinel-2 products have their edges at multiples of 20 m of the CRS (the MGRS
    tile origins are multiples of 60 m); a 10 m grid on multiples of 10 m holds each in a 2 x 2 block,
    starting at row/column 0 or 1. A grid off the multiples of 10 m cannot hold them: GridError.
    """
    affine = geobox.affine
    phase = []
    for dim, edge in (("y", affine.f), ("x", affine.c)):
        steps = edge / GRID_RESOLUTION_M
        if abs(steps - round(steps)) > 1e-6:
            raise GridError(f"the {dim} edge of the grid ({edge:.3f} m) is not on a multiple of {GRID_RESOLUTION_M:g} "
                            "m, so the native 20 m pixels (edges at multiples of 20 m) do not fall on 2 x 2 blocks of "
                            "its pixels; load the cube on the standard grid, e.g. xr_opensr.stac.load_s2(..., "
                            "bands='all') or odc.stac.load(..., resolution=10), or ask for 10 m bands only")
        phase.append(int(round(steps)) % 2)
    return phase[0], phase[1]


def hr_coords(hr: Any, y_dim: Hashable, x_dim: Hashable) -> dict[Hashable, tuple]:
    """The y and x coordinates (pixel centres, metres) of the HR GeoBox ``hr`` as ``{dim: (dim, values,
    attrs)}``; the values are the GeoBox's own (``odc.geo.xr.xr_coords`` gives the same, bit for bit)."""
    return {dim: (dim, coord.values, {"units": "metre", "long_name": f"{dim} coordinate of 2.5 m pixel centres"})
            for dim, coord in zip((y_dim, x_dim), hr.coordinates.values())}
