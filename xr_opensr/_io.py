"""Files in and out: GeoTIFF/COG and Zarr inputs, COG and Zarr outputs of ``superresolve``.

Shared by the ``xr-opensr`` command line and ``examples/batch_job.py``. Everything here is lazy until
:func:`write_result` runs the graph, and that writes ``sr`` and ``uncertainty`` in **one** pass over
the graph (both slices of the same kernel output), block by block:

* COG (``.tif``/``.tiff``): ``sr`` goes to ``OUTPUT`` and ``uncertainty`` to
  ``OUTPUT_uncertainty.tif``. Blocks are streamed into a tiled GeoTIFF beside the output (one window
  write per dask block, under a lock), then GDAL's COG driver copies it into a tiled, DEFLATE
  compressed Cloud Optimized GeoTIFF with averaged overviews.
* Zarr (``.zarr``): the result Dataset, one dask block per Zarr chunk.

An existing output is never replaced unless ``overwrite=True``; outputs are written under a temporary
name and renamed at the end, so an interrupted run leaves the user's files as they were.
"""

from __future__ import annotations

import os
import shutil
import threading
import uuid
from collections.abc import Callable, Hashable, Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from .errors import InputError

__all__ = [
    "S2_BANDS",
    "open_input",
    "output_kind",
    "output_paths",
    "check_outputs",
    "write_result",
    "write_cog",
    "write_zarr",
    "open_result",
    "open_cogs",
    "with_attrs",
    "uniform_chunks",
    "is_zarr",
]

#: Band names the engine knows, in the order of the shipped models.
S2_BANDS = ("B04", "B03", "B02", "B08")

_COG_SUFFIXES = (".tif", ".tiff")
_ZARR_SUFFIXES = (".zarr",)
UNCERTAINTY_SUFFIX = "_uncertainty"

#: GDAL COG creation options: 256 px tiles, DEFLATE with the floating-point predictor, averaged
#: overviews (GDAL makes them until the smallest fits one tile: cheap, about a third of the data).
COG_OPTIONS = {
    "COMPRESS": "DEFLATE",
    "PREDICTOR": "YES",
    "BLOCKSIZE": "256",
    "OVERVIEWS": "AUTO",
    "OVERVIEW_RESAMPLING": "AVERAGE",
    "BIGTIFF": "IF_SAFER",
    "NUM_THREADS": "ALL_CPUS",
}

#: Zarr outputs are written in format 2 with consolidated metadata: every Zarr reader (GDAL, zarr-python
#: 2 and 3, xarray) opens them, and string band labels have a stable encoding (not yet so in format 3).
ZARR_FORMAT = 2

ComputeFn = Callable[..., Any]


# --------------------------------------------------------------------------- inputs


def is_zarr(path: str | os.PathLike) -> bool:
    """True for a ``*.zarr`` path or a folder holding Zarr (v2 or v3) metadata."""
    path = Path(path)
    if path.suffix.lower() in _ZARR_SUFFIXES:
        return True
    return path.is_dir() and any((path / name).exists() for name in (".zgroup", ".zattrs", "zarr.json"))


def _chunk_dict(chunks: int | str | dict | None, dims: Sequence[Hashable]) -> dict | None:
    if chunks is None:
        return None
    if isinstance(chunks, dict):
        return {k: v for k, v in chunks.items() if k in dims}
    if isinstance(chunks, str) and chunks != "auto":
        raise InputError(f"chunks={chunks!r} is not understood; give a number of pixels (e.g. 256) or 'auto'")
    out: dict[Hashable, Any] = {"y": chunks, "x": chunks}
    if "band" in dims:
        out["band"] = -1
    if "time" in dims:
        out["time"] = 1
    return {k: v for k, v in out.items() if k in dims}


def open_input(
    path: str | os.PathLike,
    *,
    chunks: int | str | dict | None = 256,
    bands: Sequence[str] | None = None,
    variable: str | None = None,
) -> xr.DataArray | xr.Dataset:
    """Open a Sentinel-2 raster lazily: a GeoTIFF/COG (one band per raster band) or a Zarr store.

    Parameters
    ----------
    path : a GeoTIFF or COG (``.tif``), or a Zarr store (``.zarr``) written by xarray: either one
        variable per band (``B04``, ``B03``, ...; the layout of ``xr_opensr.stac.load_s2``) or one
        variable with a ``band`` dimension.
    chunks : LR pixels per dask block along ``y`` and ``x`` (all bands in one block, one time step per
        block), ``"auto"``, a dict, or None for numpy.
    bands : names of the raster bands in file order, for GeoTIFFs without band descriptions, e.g.
        ``("B04", "B03", "B02", "B08")``. Band descriptions in the file are used otherwise.
    variable : the variable of a Zarr store to use when it holds several non-band variables.

    Returns
    -------
    DataArray ``(band, y, x)`` (GeoTIFF: values as stored, e.g. uint16 DN with nodata 0) or Dataset
    of band variables ``(time, y, x)``/``(y, x)`` (Zarr), with the CRS readable by ``.rio.crs``.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise InputError(
            f"input not found: {path}; pass an existing GeoTIFF/COG (.tif) or Zarr store (.zarr)"
        )
    if is_zarr(path):
        return _open_zarr_input(path, chunks=chunks, variable=variable)
    if path.is_dir():
        raise InputError(
            f"input {path} is a folder but not a Zarr store; pass a GeoTIFF/COG file or a .zarr store"
        )
    return _open_geotiff_input(path, chunks=chunks, bands=bands)


def _open_geotiff_input(path: Path, *, chunks, bands) -> xr.DataArray:
    import rasterio
    import rioxarray

    try:
        with rasterio.open(path) as src:
            count, descriptions = src.count, src.descriptions
    except rasterio.errors.RasterioIOError as err:
        raise InputError(
            f"cannot read {path} as a raster ({err}); pass a GeoTIFF/COG (.tif) or a Zarr store (.zarr)"
        ) from err
    names: Sequence[str] | None = None
    if bands is not None:
        names = [str(b) for b in bands]
        if len(names) != count:
            raise InputError(
                f"{path} has {count} bands but {len(names)} band names were given ({', '.join(names)}); "
                f"give one name per raster band in file order"
            )
    elif all(descriptions) and len(set(descriptions)) == count:
        names = list(descriptions)
    dims = ("band", "y", "x")
    da = rioxarray.open_rasterio(
        path, chunks=_chunk_dict(chunks, dims), mask_and_scale=False, lock=False
    )
    # rioxarray always records GDAL's scale/offset, 1 and 0 when the file declares none; taken at face
    # value they would turn DN into "reflectance" = DN. Keep them only when the file sets real ones.
    if da.attrs.get("scale_factor", 1.0) == 1.0 and da.attrs.get("add_offset", 0.0) == 0.0:
        da.attrs.pop("scale_factor", None)
        da.attrs.pop("add_offset", None)
    if names is not None:
        da = da.assign_coords(band=list(names))
        da.attrs.pop("long_name", None)
    da.name = da.name or path.stem
    return da


def _open_zarr_input(path: Path, *, chunks, variable) -> xr.DataArray | xr.Dataset:
    try:
        ds = xr.open_zarr(path, chunks=None, decode_coords="all", consolidated=None)
    except Exception as err:  # zarr raises several types for a folder that is not a store
        raise InputError(f"cannot open {path} as a Zarr store ({type(err).__name__}: {err})") from err
    if ds.rio.crs is None and "spatial_ref" in ds.coords:
        ds = ds.rio.write_crs(ds.spatial_ref.attrs.get("crs_wkt"))
    from .core import BAND_ALIASES

    known = {name.lower() for names in BAND_ALIASES.values() for name in names}
    band_vars = [v for v in ds.data_vars if str(v).lower() in known]
    if variable is not None:
        if variable not in ds.data_vars:
            raise InputError(f"variable {variable!r} is not in {path}; it has {sorted(map(str, ds.data_vars))}")
        obj: xr.DataArray | xr.Dataset = ds[variable]
    elif band_vars:
        obj = ds[band_vars]
    elif len(ds.data_vars) == 1:
        obj = ds[next(iter(ds.data_vars))]
    else:
        raise InputError(
            f"{path} holds variables {sorted(map(str, ds.data_vars))} and none is named like a "
            f"model band ({', '.join(S2_BANDS)} or red/green/blue/nir); choose one with variable=... "
            "(CLI: --variable)"
        )
    wanted = _chunk_dict(chunks, obj.dims)
    return obj.chunk(wanted) if wanted is not None else obj


# --------------------------------------------------------------------------- outputs


def output_kind(path: str | os.PathLike) -> str:
    """``"cog"`` for ``.tif``/``.tiff``, ``"zarr"`` for ``.zarr``; anything else raises InputError."""
    suffix = Path(path).suffix.lower()
    if suffix in _COG_SUFFIXES:
        return "cog"
    if suffix in _ZARR_SUFFIXES:
        return "zarr"
    raise InputError(
        f"output {str(path)!r} has an unknown extension {suffix or '(none)'!r}; "
        "end it in .tif (Cloud Optimized GeoTIFF) or .zarr (Zarr store)"
    )


def uncertainty_path(path: str | os.PathLike) -> Path:
    """``out.tif`` -> ``out_uncertainty.tif``: where a COG output keeps the uncertainty."""
    path = Path(path)
    return path.with_name(path.stem + UNCERTAINTY_SUFFIX + path.suffix)


def output_paths(path: str | os.PathLike) -> list[Path]:
    """Every file or folder :func:`write_result` creates for ``path``."""
    path = Path(path).expanduser()
    return [path, uncertainty_path(path)] if output_kind(path) == "cog" else [path]


def check_outputs(path: str | os.PathLike, *, overwrite: bool = False) -> list[Path]:
    """Refuse early (before any work) when an output exists and ``overwrite`` is False."""
    paths = output_paths(path)
    for p in paths:
        if not p.parent.exists():
            raise InputError(f"the folder of output {p} does not exist; create it first (mkdir -p {p.parent})")
    existing = [p for p in paths if p.exists() or p.is_symlink()]
    if existing and not overwrite:
        raise InputError(
            f"output {', '.join(map(str, existing))} already exists and was left untouched; "
            "choose another output path or pass --overwrite (overwrite=True) to replace it"
        )
    return paths


def _tmp_sibling(path: Path, tag: str = "partial") -> Path:
    return path.with_name(f".{path.name}.{tag}-{uuid.uuid4().hex[:8]}")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with suppress(FileNotFoundError):
            path.unlink()


def _replace(tmp: Path, final: Path) -> None:
    """Move ``tmp`` onto ``final`` (files atomically; a folder replaces the old one after it is ready)."""
    if final.is_dir() and not final.is_symlink():
        old = _tmp_sibling(final, "old")
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


def _default_compute(*collections: Any) -> Any:
    import dask

    return dask.compute(*collections)


def _write_lock() -> Any:
    """A lock that serialises window writes: distributed's when a Client is active, else a thread lock."""
    try:
        from distributed import Lock, default_client

        client = default_client()
    except (ImportError, ValueError):
        return threading.Lock()
    del client  # the Lock finds the scheduler itself (in the client and on the workers)
    return Lock(f"xr-opensr-write-{uuid.uuid4().hex}")


def _single_time(da: xr.DataArray, what: str) -> xr.DataArray:
    extra = [d for d in da.dims if d not in ("band", "y", "x")]
    for dim in extra:
        if da.sizes[dim] != 1:
            raise InputError(
                f"{what} has {da.sizes[dim]} steps along {dim!r}, a GeoTIFF holds one; write a .zarr output, "
                f"or select one step first (e.g. obj.isel({dim}=0))"
            )
        da = da.isel({dim: 0})
    if "band" not in da.dims:
        da = da.expand_dims("band")
    return da.transpose("band", "y", "x")


def _prepare_raster(da: xr.DataArray, what: str) -> xr.DataArray:
    da = _single_time(da, what)
    da = da.astype("float32")
    names = tuple(str(b) for b in da["band"].values) if "band" in da.coords else None
    attrs = {k: v for k, v in da.attrs.items() if isinstance(v, str | int | float) and k not in ("_FillValue",)}
    if "long_name" in attrs:
        attrs["description"] = attrs.pop("long_name")
    attrs["long_name"] = names if names and len(names) == da.sizes["band"] else what
    da.attrs = attrs
    da.encoding = {}
    da = da.rio.write_nodata(np.nan, encoded=False)
    return da


def write_cog(
    arrays: dict[str | os.PathLike, xr.DataArray],
    *,
    overwrite: bool = False,
    compute: ComputeFn | None = None,
) -> list[Path]:
    """Write DataArrays ``(band, y, x)`` to Cloud Optimized GeoTIFFs, computing all in one pass.

    Parameters
    ----------
    arrays : output path -> DataArray with a CRS (float32 is written; NaN is nodata). Dask arrays are
        streamed block by block; the shared parts of their graphs are computed once.
    overwrite : replace existing files; without it an existing file raises InputError, untouched.
    compute : ``compute(*delayed)``, e.g. to run with a progress bar; default ``dask.compute``.
    """
    from rasterio.shutil import copy as rio_copy

    compute = compute or _default_compute
    finals = [Path(p).expanduser() for p in arrays]
    for p in finals:
        if p.exists() and not overwrite:
            raise InputError(f"output {p} already exists and was left untouched; pass --overwrite (overwrite=True)")
    lock = _write_lock()
    staged: list[tuple[Path, Path]] = []  # (streamed GeoTIFF, COG) per output
    pending = []
    try:
        for final, da in zip(finals, arrays.values(), strict=True):
            if da.rio.crs is None:
                raise InputError(f"the data for {final} has no CRS; set one with obj.rio.write_crs(...)")
            da = _prepare_raster(da, final.stem)
            raw, cog = _tmp_sibling(final, "stream"), _tmp_sibling(final, "cog")
            staged.append((raw, cog))
            side = min(da.sizes["y"], da.sizes["x"])
            tile = 256 if side >= 256 else 16 * max(1, side // 16)  # GeoTIFF tiles: multiples of 16
            delayed = da.rio.to_raster(
                raw, driver="GTiff", tiled=True, blockxsize=tile, blockysize=tile,
                lock=lock if da.chunks is not None else None, compute=False, BIGTIFF="IF_SAFER",
            )
            if delayed is not None:
                pending.append(delayed)
        if pending:
            compute(*pending)
        for raw, cog in staged:
            rio_copy(str(raw), str(cog), driver="COG", **COG_OPTIONS)
            _remove(raw)
        for (_, cog), final in zip(staged, finals, strict=True):
            _replace(cog, final)
    finally:
        for raw, cog in staged:
            _remove(raw)
            _remove(cog)
    return finals


def uniform_chunks(obj: xr.Dataset) -> xr.Dataset:
    """Rechunk dask variables whose chunks are not uniform (all equal but the last), as Zarr needs."""
    fixes = {}
    for dim, sizes in obj.chunksizes.items():
        if len(sizes) > 1 and (len(set(sizes[:-1])) > 1 or sizes[-1] > sizes[0]):
            fixes[dim] = max(sizes)
    out = obj.chunk(fixes) if fixes else obj
    for var in out.variables.values():
        var.encoding.pop("chunks", None)
        var.encoding.pop("preferred_chunks", None)
    return out


def write_zarr(
    result: xr.Dataset,
    path: str | os.PathLike,
    *,
    overwrite: bool = False,
    compute: ComputeFn | None = None,
    group: str | None = None,
) -> Path:
    """Write a Dataset to a new Zarr store (one dask block per Zarr chunk), in one pass.

    The store is written under a temporary name beside ``path`` and renamed when complete.
    """
    compute = compute or _default_compute
    final = Path(path).expanduser()
    if final.exists() and not overwrite:
        raise InputError(f"output {final} already exists and was left untouched; pass --overwrite (overwrite=True)")
    tmp = _tmp_sibling(final)
    try:
        delayed = uniform_chunks(result).to_zarr(
            tmp, mode="w-", group=group, compute=False, consolidated=True, zarr_format=ZARR_FORMAT
        )
        compute(delayed)
        _replace(tmp, final)
    finally:
        _remove(tmp)
    return final


def write_result(
    result: xr.Dataset,
    path: str | os.PathLike,
    *,
    overwrite: bool = False,
    compute: ComputeFn | None = None,
) -> list[Path]:
    """Write the Dataset of ``superresolve`` to ``path`` (``.tif`` -> COGs, ``.zarr`` -> Zarr).

    A ``.tif`` output gets ``sr`` (4 bands, reflectance) in ``path`` and ``uncertainty`` (per-band
    standard deviation, reflectance) in ``<stem>_uncertainty.tif``; both are computed in one pass.
    Returns the paths written.
    """
    kind = output_kind(path)
    check_outputs(path, overwrite=overwrite)
    if kind == "zarr":
        return [write_zarr(result, path, overwrite=overwrite, compute=compute)]
    for name in ("sr", "uncertainty"):
        if name not in result:
            raise InputError(f"the result has no {name!r} variable; pass the Dataset returned by .opensr.superresolve()")
    sr_path, unc_path = output_paths(path)
    arrays = {sr_path: with_attrs(result, "sr"), unc_path: with_attrs(result, "uncertainty")}
    return write_cog(arrays, overwrite=overwrite, compute=compute)


def with_attrs(result: xr.Dataset, name: str) -> xr.DataArray:
    """``result[name]`` carrying the Dataset's attrs too (model, samples, seed ... become GeoTIFF tags)."""
    da = result[name]
    return da.assign_attrs({**result.attrs, **da.attrs})


def open_cogs(sr_path: str | os.PathLike, uncertainty_path: str | os.PathLike, *, chunks: Any = None) -> xr.Dataset:
    """Read an ``sr`` COG and an ``uncertainty`` COG (as written by :func:`write_cog`) into one Dataset."""
    import rioxarray

    out = {}
    for name, p in (("sr", sr_path), ("uncertainty", uncertainty_path)):
        da = rioxarray.open_rasterio(p, chunks=chunks, mask_and_scale=True)
        names = da.attrs.pop("long_name", None)
        if isinstance(names, tuple | list) and len(names) == da.sizes["band"]:
            da = da.assign_coords(band=[str(n) for n in names])
        out[name] = da
    return xr.Dataset(out)


def open_result(path: str | os.PathLike, *, chunks: Any = None) -> xr.Dataset:
    """Read back what :func:`write_result` wrote: a Dataset with ``sr`` and ``uncertainty``."""
    path = Path(path).expanduser()
    if output_kind(path) == "zarr":
        return xr.open_zarr(path, chunks=chunks, decode_coords="all")
    return open_cogs(*output_paths(path), chunks=chunks)
