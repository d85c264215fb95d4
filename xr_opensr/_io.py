"""Files in and out: GeoTIFF/COG and Zarr inputs, COG and Zarr outputs of ``superresolve``.

Shared by the ``xr-opensr`` command line and ``examples/batch_job.py``. Everything here is lazy until
:func:`write_result` runs the graph, and that writes ``sr`` and ``uncertainty`` in **one** pass over
the graph (both slices of the same kernel output), block by block:

* COG (``.tif``/``.tiff``): ``sr`` goes to ``OUTPUT`` and ``uncertainty`` to
  ``OUTPUT_uncertainty.tif``. Blocks are streamed into a tiled GeoTIFF beside the output (one window
  write per dask block, under a lock), then GDAL's COG driver copies it into a tiled, DEFLATE
  compressed Cloud Optimized GeoTIFF with averaged overviews.
* Zarr (``.zarr``): the result Dataset, one dask block per Zarr chunk.

Outputs are verified before they are published, and published atomically (the lock, the journal and
the cleanup rules are in :mod:`xr_opensr._atomic`):

* Everything is written under temporary names beside the output, then **reopened and read in full**
  (a COG's every block and overview, a Zarr store's every chunk): a full disk, a file-size limit or a
  GDAL error that GDAL only logged cannot slip through as a "written" file.
* **sr and uncertainty together** (the COG pair, a two-phase rule readers can check): both COGs carry
  the same ``xr_opensr_run`` tag; ``OUTPUT_uncertainty.tif`` is renamed into place first and
  ``OUTPUT.tif`` last, after a commit journal ``.OUTPUT.tif.xr-opensr-journal`` is written. So a pair
  is complete when both files exist with equal ``xr_opensr_run`` tags and no journal is beside them;
  :func:`open_result`/:func:`open_cogs` check exactly that, and the next run to the same path (or
  :func:`finish`) completes a publication whose writer died mid-way. A Zarr output is one folder:
  ``sr`` and ``uncertainty`` always go together.
* An existing output is replaced only with ``overwrite=True`` and only once the new one is complete
  and verified (a Zarr folder by an atomic exchange of names). Without it, or when another run is
  writing the same path, nothing is touched (InputError / OutputError).
* Only outputs of xr-opensr are ever replaced (:func:`foreign`): a GeoTIFF carrying the
  ``xr_opensr_run`` tag, a Zarr store carrying that attribute (or the title of ``superresolve``'s
  result) and holding nothing but Zarr files. A folder named ``out.tif``, a user's file or another
  program's store is an InputError naming it, even with ``overwrite=True``.
* A GeoTIFF of a result with one time step records it as the tag ``time`` (ISO timestamp).
* OS errors while writing become :class:`~xr_opensr.errors.OutputError` naming the cause and the fix;
  removing temporaries never raises over the real error.

Inputs are read through a guard: a truncated GeoTIFF or a corrupt Zarr chunk raises InputError naming
the file (when the graph runs), not a raw decoder traceback.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import uuid
import warnings
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from . import _atomic
from .errors import InputError, OpenSRError, OutputError
from .sentinel2 import BAND_ALIASES, MODEL_BANDS

__all__ = [
    "S2_BANDS",
    "open_input",
    "output_kind",
    "output_paths",
    "check_outputs",
    "reserve",
    "foreign",
    "refuse_foreign",
    "written_by_xr_opensr",
    "verify_zarr",
    "finish",
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
S2_BANDS = MODEL_BANDS

_COG_SUFFIXES = (".tif", ".tiff")
_ZARR_SUFFIXES = (".zarr",)
UNCERTAINTY_SUFFIX = "_uncertainty"
#: tag/attribute naming the run that wrote a COG: the sr and uncertainty COGs of one run share it
RUN_TAG = "xr_opensr_run"

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
    out: dict[Hashable, Any] = {"y": chunks, "x": chunks, "band": -1, "time": 1}
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
    da = rioxarray.open_rasterio(path, chunks=None, cache=False, mask_and_scale=False, lock=False)
    da = _guarded(da, path, _chunk_dict(chunks, dims))
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
    if isinstance(obj, xr.Dataset):
        return obj.assign({name: _guarded(var, path / str(name), wanted) for name, var in obj.data_vars.items()})
    return _guarded(obj, path / str(obj.name), wanted)


class _GuardedArray:
    """Reads blocks of a lazily indexed Variable; a failure (truncated file, corrupt chunk) is an InputError
    naming the file, raised where the graph reads it."""

    def __init__(self, variable: xr.Variable, source: Path) -> None:
        self.variable, self.source = variable, source
        self.shape, self.dtype, self.ndim = variable.shape, variable.dtype, variable.ndim

    def __getitem__(self, key: Any) -> np.ndarray:
        try:
            return np.asarray(self.variable[key].values)
        except Exception as err:  # GDAL, zarr and the codecs raise many types for damaged data
            raise InputError(
                f"cannot read {self.source} ({type(err).__name__}: {err}); the file is truncated or corrupt: "
                "re-create or re-download it"
            ) from err

    def __dask_tokenize__(self) -> tuple:
        try:
            stat = os.stat(self.source if self.source.exists() else self.source.parent)
            stamp: tuple = (stat.st_mtime_ns, stat.st_size)
        except OSError:
            stamp = ()
        return ("xr-opensr-read", str(self.source), stamp, self.shape, str(self.dtype))


def _guarded(obj: xr.DataArray, source: Path, chunks: dict | None) -> xr.DataArray:
    """``obj`` (lazily indexed, not dask) as a dask array read through :class:`_GuardedArray`."""
    if chunks is None:
        return obj
    import dask.array as dsa

    spec = tuple(chunks.get(dim, -1) for dim in obj.dims)
    meta = np.empty((0,) * obj.ndim, dtype=obj.dtype)
    return obj.copy(data=dsa.from_array(_GuardedArray(obj.variable, source), chunks=spec, meta=meta))


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


# --------------------------------------------------------------------------- what overwrite may replace

#: the metadata files of a Zarr store (formats 2 and 3); every other file in a store is a chunk
_ZARR_META = frozenset({".zgroup", ".zattrs", ".zarray", ".zmetadata", "zarr.json"})
_ZARR_CHUNK = re.compile(r"\d+(\.\d+)*")


def written_by_xr_opensr(attrs: Mapping[str, Any]) -> bool:
    """True for the attrs (GeoTIFF tags, Zarr attributes) of an output of xr-opensr: the ``xr_opensr_run``
    mark of :func:`write_cog`/:func:`write_zarr`, the title ``superresolve`` gives its result, or the
    settings of a batch store (``examples/batch_job.py``)."""
    return RUN_TAG in attrs or "xr_opensr_batch" in attrs or "(xr-opensr)" in str(attrs.get("title", ""))


def foreign(path: str | os.PathLike) -> str | None:
    """Why the existing ``path`` is not an output of xr-opensr that ``overwrite`` may replace; None if it is one.

    A ``.tif`` output must be a GeoTIFF file carrying the tags xr-opensr writes; a ``.zarr`` output a
    Zarr store whose attributes say xr-opensr wrote it and that holds nothing but Zarr metadata and chunks.
    Folders, links to nothing, other files (a text file named ``out.tif``) and stores of other programs
    are never replaced: the library deletes only what it wrote.
    """
    path = Path(path)
    if path.is_symlink() and not path.exists():
        return "a symbolic link to nothing"
    kind = output_kind(path)
    if kind == "cog":
        if path.is_dir():
            return "a folder"
        if not path.is_file():
            return "not a regular file"
        return _foreign_geotiff(path)
    if not path.is_dir():
        return "a file, not a Zarr store"
    return _foreign_zarr(path)


def _foreign_geotiff(path: Path) -> str | None:
    import rasterio

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. NotGeoreferencedWarning: only the format matters here
            with rasterio.open(path) as src:
                driver, tags = src.driver, src.tags()
    except Exception:  # rasterio raises several types for files that are not rasters
        return "not a GeoTIFF"
    if driver != "GTiff":
        return f"a {driver} raster, not a GeoTIFF"
    if not written_by_xr_opensr(tags):
        return f"a GeoTIFF without the {RUN_TAG} tag of xr-opensr's outputs"
    return None


def _foreign_zarr(path: Path) -> str | None:
    import json

    attrs: Any = None
    try:
        if (path / ".zattrs").is_file():
            attrs = json.loads((path / ".zattrs").read_text())
        elif (path / "zarr.json").is_file():
            attrs = json.loads((path / "zarr.json").read_text()).get("attributes", {})
        elif (path / ".zgroup").is_file():
            attrs = {}
    except (OSError, ValueError, AttributeError):
        return "a Zarr store whose metadata cannot be read"
    if attrs is None:
        return "a folder, not a Zarr store"
    if not isinstance(attrs, dict) or not written_by_xr_opensr(attrs):
        return f"a Zarr store without the {RUN_TAG} attribute of xr-opensr's outputs"
    strangers = sorted(str(p.relative_to(path)) for p in path.rglob("*")
                       if not p.is_dir() and p.name not in _ZARR_META and not _ZARR_CHUNK.fullmatch(p.name))
    if strangers:
        more = f" and {len(strangers) - 5} more" if len(strangers) > 5 else ""
        return f"it holds files that are not Zarr metadata or chunks: {', '.join(strangers[:5])}{more}"
    return None


def refuse_foreign(problems: Sequence[tuple[Path, str]]) -> None:
    """Raise InputError naming every ``(path, why)``: existing paths that are not outputs of xr-opensr."""
    if problems:
        listing = "; ".join(f"{p} is not an output of xr-opensr ({why})" for p, why in problems)
        raise InputError(
            f"{listing}: --overwrite (overwrite=True) replaces only what xr-opensr wrote, so it was left "
            "untouched; remove it yourself if it may go, or choose another output path"
        )


def check_outputs(
    path: str | os.PathLike, *, overwrite: bool = False, inputs: Sequence[str | os.PathLike] = ()
) -> list[Path]:
    """Refuse early (before any work): a missing folder, an output that is one of ``inputs`` (or inside
    one), a folder that cannot be written, another run writing the output, an existing output without
    ``overwrite``. Takes the output's lock for a moment (see :func:`reserve`), so an interrupted
    publication is finished and stale temporaries are removed even when the run is then refused."""
    paths = output_paths(path)
    for p in paths:
        if not p.parent.is_dir():
            raise InputError(f"the folder of output {p} does not exist; create it first (mkdir -p {p.parent})")
    for src in inputs:
        src = Path(src).expanduser().resolve()
        for p in paths:
            out = p.resolve()
            if out == src or out in src.parents or (src in out.parents and is_zarr(src)):
                raise InputError(
                    f"output {p} is the input {src} (or inside it); write to another path: the input is "
                    "read while the output is written"
                )
    with reserve(paths, overwrite=overwrite):
        pass
    return paths


@contextlib.contextmanager
def reserve(paths: Sequence[str | os.PathLike], *, overwrite: bool = False) -> Iterator[list[Path]]:
    """Hold the write lock of ``paths`` (see :mod:`xr_opensr._atomic`) and check them under it.

    Finishes an interrupted publication and removes stale temporaries of dead runs first; then an
    existing output without ``overwrite`` raises InputError. Re-entrant: the CLI reserves its output
    before reading the input, and the writers reserve it again.
    """
    finals = [Path(p).expanduser() for p in paths]
    with _atomic.locked(finals):
        existing = [p for p in finals if p.exists() or p.is_symlink()]
        if existing and not overwrite:
            raise InputError(
                f"output {', '.join(map(str, existing))} already exists and was left untouched; "
                "choose another output path or pass --overwrite (overwrite=True) to replace it"
            )
        refuse_foreign([(p, why) for p in existing if (why := foreign(p)) is not None])
        yield finals


def _single_time(da: xr.DataArray, final: Path) -> xr.DataArray:
    extra = [d for d in da.dims if d not in ("band", "y", "x")]
    for dim in extra:
        if da.sizes[dim] != 1:
            raise InputError(
                f"the data for {final} has {da.sizes[dim]} steps along {dim!r} and a GeoTIFF holds one: select "
                f"one step first (e.g. obj.isel({dim}=0); CLI: --time), or write a .zarr output"
            )
        da = da.isel({dim: 0})
    if "band" not in da.dims:
        da = da.expand_dims("band")
    return da.transpose("band", "y", "x")


_CF_KEYS = ("_FillValue", "scale_factor", "add_offset", "nodata")


def time_tag(obj: xr.DataArray | xr.Dataset) -> str | None:
    """The ISO timestamp of the one time step ``obj`` holds (a time coordinate of one value), else None."""
    if "time" not in obj.coords or obj["time"].size != 1:
        return None
    value = obj["time"].values.reshape(-1)[0]
    if np.issubdtype(obj["time"].dtype, np.datetime64):
        import pandas as pd

        return pd.Timestamp(value).isoformat()
    return str(value.isoformat() if hasattr(value, "isoformat") else value)


def _prepare_raster(da: xr.DataArray, final: Path, run: str) -> xr.DataArray:
    """float32 with NaN nodata, or integer DN (``_encode``) with its nodata, scale and offset; tagged with
    the run and, when the data hold one time step, its timestamp (tag ``time``)."""
    what = final.stem
    da = _single_time(da, final)
    when = time_tag(da)
    encoded = np.issubdtype(da.dtype, np.integer)
    nodata = da.attrs.get("_FillValue", da.attrs.get("nodata", 0)) if encoded else np.nan
    da = da if encoded else da.astype("float32")
    names = tuple(str(b) for b in da["band"].values) if "band" in da.coords else None
    keep = ("scale_factor", "add_offset") if encoded else ()
    attrs = {k: v for k, v in da.attrs.items()
             if isinstance(v, str | int | float | np.number) and (k not in _CF_KEYS or k in keep)}
    if "long_name" in attrs:
        attrs["description"] = attrs.pop("long_name")
    attrs["long_name"] = names if names and len(names) == da.sizes["band"] else what
    attrs[RUN_TAG] = run
    if when is not None:
        attrs["time"] = when
    da.attrs = attrs
    da.encoding = {}
    return da.rio.write_nodata(nodata, encoded=False)


def _check_raster(path: Path, *, count: int, shape: tuple[int, int], dtype: str, run: str | None) -> None:
    """Reopen a GeoTIFF and read all of it (every block, every overview): raise if any of it is missing."""
    import rasterio

    size = path.stat().st_size
    with rasterio.open(path) as src:
        if (src.count, src.height, src.width, src.dtypes[0]) != (count, *shape, dtype):
            raise OutputError(
                f"{path} reads back as {src.count} x {src.height} x {src.width} {src.dtypes[0]}, expected "
                f"{count} x {shape[0]} x {shape[1]} {dtype}"
            )
        if run is not None and src.tags().get(RUN_TAG) != run:
            raise OutputError(f"{path} lacks the tags it was written with")
        bands = [1] if src.interleaving is not None and src.interleaving.value == "PIXEL" else range(1, count + 1)
        for b in bands:
            for (i, j), window in src.block_windows(b):
                offset = src.get_tag_item(f"BLOCK_OFFSET_{j}_{i}", "TIFF", bidx=b)
                nbytes = src.get_tag_item(f"BLOCK_SIZE_{j}_{i}", "TIFF", bidx=b)
                if not offset or not nbytes or int(offset) + int(nbytes) > size:
                    raise OutputError(f"{path}: block ({i}, {j}) of band {b} was not written completely")
                src.read(b, window=window)
        levels = len(src.overviews(1))
    for level in range(levels):  # block by block: memory stays at one block whatever the size
        with rasterio.open(path, overview_level=level) as ovr:
            for _, window in ovr.block_windows(1):
                ovr.read(window=window)


def _verify_raster(path: Path, final: Path, **expected: Any) -> None:
    try:
        _check_raster(path, **expected)
    except OSError as err:  # RasterioIOError included
        raise OutputError(
            f"writing {final} failed: the file written does not read back ({err}); nothing was published "
            f"(an existing output is unchanged); {_atomic.hint(err, final.parent)}"
        ) from err


def _write_error(err: Exception, finals: Sequence[Path], existed: Sequence[Path]) -> OutputError:
    """The OutputError for an OS error during a write: the cause, what became of the outputs, the fix."""
    kept = f"; the existing {', '.join(map(str, existed))} is unchanged" if existed else ""
    where = f" ({err.filename})" if getattr(err, "filename", None) else ""
    return OutputError(
        f"writing {', '.join(map(str, finals))} failed: {getattr(err, 'strerror', None) or err}{where}; nothing was "
        f"published{kept}; "
        f"{_atomic.hint(err, finals[0].parent)}"
    )


@contextlib.contextmanager
def _mapped_os_errors(finals: Sequence[Path]) -> Iterator[None]:
    existed = [p for p in finals if p.exists()]
    try:
        yield
    except OutputError:
        raise
    except OSError as err:
        raise _write_error(err, finals, existed) from err


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


def _stream(finals: Sequence[Path], arrays: Sequence[xr.DataArray], run: str, compute: ComputeFn) -> list[Path]:
    """Write every array into a tiled GeoTIFF beside its output, all in one pass over the graphs."""
    lock = _write_lock()
    raws, pending = [], []
    for final, da in zip(finals, arrays, strict=True):
        raw = _atomic.temp_path(final, "stream", run)
        raws.append(raw)
        side = min(da.sizes["y"], da.sizes["x"])
        tile = 256 if side >= 256 else 16 * max(1, side // 16)  # GeoTIFF tiles: multiples of 16
        delayed = da.rio.to_raster(
            raw, driver="GTiff", tiled=True, blockxsize=tile, blockysize=tile,
            lock=lock if da.chunks is not None else None, compute=False, BIGTIFF="IF_SAFER",
        )
        if delayed is not None:
            pending.append(delayed)
    _atomic.stage("streaming")
    try:
        if pending:
            compute(*pending)
    except (OSError, OpenSRError):
        raise
    except Exception as err:  # GDAL reports a stream cut short (full disk, size limit) as an unreadable format
        if not any(raw.name in str(err) for raw in raws):
            raise
        raise _write_error(err, finals, [p for p in finals if p.exists()]) from err
    return raws


def write_cog(
    arrays: dict[str | os.PathLike, xr.DataArray],
    *,
    overwrite: bool = False,
    compute: ComputeFn | None = None,
) -> list[Path]:
    """Write DataArrays ``(band, y, x)`` to Cloud Optimized GeoTIFFs, computing all in one pass.

    Each is streamed into a tiled GeoTIFF beside its output, checked, copied into a COG, and the COG
    reopened and read in full; only when every one is complete are they published together (see
    :mod:`xr_opensr._atomic`): the first path is renamed last, and all carry the same ``xr_opensr_run``
    tag, so a reader can check that they belong together (:func:`open_cogs` does).

    Parameters
    ----------
    arrays : output path -> DataArray with a CRS: float (written as float32, NaN nodata) or integer
        DN from ``output_dtype="uint16"`` (nodata, scale and offset kept). Dask arrays are streamed
        block by block; the shared parts of their graphs are computed once.
    overwrite : replace existing files (only after the new ones are complete); without it an existing
        file raises InputError, untouched.
    compute : ``compute(*delayed)``, e.g. to run with a progress bar; default ``dask.compute``.

    Raises
    ------
    InputError : an output exists (without ``overwrite``), no CRS, several time steps.
    OutputError : the folder is missing or not writable, the disk is full, a file-size limit, another
        run writing the same path, or a written file that does not read back. Nothing is published then.
    """
    from rasterio.shutil import copy as rio_copy

    compute = compute or _default_compute
    finals = [Path(p).expanduser() for p in arrays]
    run = _atomic.new_run_id()
    with reserve(finals, overwrite=overwrite):
        prepared = []
        for final, da in zip(finals, arrays.values(), strict=True):
            if da.rio.crs is None:
                raise InputError(f"the data for {final} has no CRS; set one with obj.rio.write_crs(...)")
            prepared.append(_prepare_raster(da, final, run))
        raws = [_atomic.temp_path(f, "stream", run) for f in finals]
        cogs = [_atomic.temp_path(f, "cog", run) for f in finals]
        with _atomic.temporaries(*raws, *cogs), _mapped_os_errors(finals):
            _stream(finals, prepared, run, compute)
            _atomic.stage("streamed")
            for final, da, raw, cog in zip(finals, prepared, raws, cogs, strict=True):
                expected = {"count": da.sizes["band"], "shape": (da.sizes["y"], da.sizes["x"]),
                            "dtype": str(da.dtype), "run": run}
                _verify_raster(raw, final, **expected)
                rio_copy(str(raw), str(cog), driver="COG", **COG_OPTIONS)
                _verify_raster(cog, final, **expected)  # before the stream goes: the disk as the copy left it
                _atomic.remove_quietly(raw)
                _atomic.stage("copied")
            _atomic.stage("verified")
            _atomic.commit(list(zip(cogs, finals, strict=True))[::-1], run)
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


def verify_zarr(store: str | os.PathLike, expected: xr.Dataset, *, group: str | None = None) -> int:
    """Reopen a Zarr store written from ``expected`` and read all of it; raise OutputError if any is missing.

    Every data variable must be there with its shape and every chunk present (stores are written with
    ``write_empty_chunks=True``, so a missing chunk is a lost write, not a fill value). Returns the
    number of finite values of ``sr`` (0: an all-NaN result), or -1 when there is no ``sr``.
    """
    import dask
    import zarr

    store = Path(store)
    try:
        root = zarr.open_group(str(store), mode="r", path=group or "", use_consolidated=False)
        arrays = {}
        for name, var in expected.data_vars.items():
            arr = root[str(name)]
            if tuple(arr.shape) != tuple(var.shape) or arr.nchunks_initialized != arr.nchunks:
                raise OutputError(
                    f"{store}: variable {name!r} has shape {arr.shape} and {arr.nchunks_initialized} of "
                    f"{arr.nchunks} chunks, expected {var.shape} and all chunks"
                )
            arrays[name] = arr
        # the consolidated view readers use (a batch store consolidates after its groups are checked)
        opened = xr.open_zarr(store, group=group, decode_coords="all", consolidated=group is None)
        reads = [np.isfinite(opened[name].data).sum() for name in arrays]
        counts = dask.compute(*reads, scheduler="threads")
    except OutputError:
        raise
    except Exception as err:  # zarr/numcodecs raise several types for a damaged store
        raise OutputError(f"{store} does not read back ({type(err).__name__}: {err})") from err
    names = list(arrays)
    return int(counts[names.index("sr")]) if "sr" in names else -1


def write_zarr(
    result: xr.Dataset,
    path: str | os.PathLike,
    *,
    overwrite: bool = False,
    compute: ComputeFn | None = None,
    group: str | None = None,
) -> Path:
    """Write a Dataset to a new Zarr store (one dask block per Zarr chunk), in one pass.

    The store is written under a temporary name beside ``path``, reopened and read in full
    (:func:`verify_zarr`), and only then published: renamed to ``path``, or, with ``overwrite``,
    atomically exchanged with the existing store (see :mod:`xr_opensr._atomic`). Raises like
    :func:`write_cog`.
    """
    compute = compute or _default_compute
    final = Path(path).expanduser()
    run = _atomic.new_run_id()
    with reserve([final], overwrite=overwrite):
        tmp = _atomic.temp_path(final, "zarr", run)
        with _atomic.temporaries(tmp), _mapped_os_errors([final]):
            data = uniform_chunks(result).assign_attrs({RUN_TAG: run})  # marks the store as an output
            delayed = data.to_zarr(tmp, mode="w-", group=group, compute=False, consolidated=True,
                                   zarr_format=ZARR_FORMAT, write_empty_chunks=True)
            _atomic.stage("streaming")
            compute(delayed)
            _atomic.stage("streamed")
            if verify_zarr(tmp, data, group=group) == 0:
                warnings.warn(f"{final}: every sr value is NaN (nodata); check the input's nodata and values",
                              RuntimeWarning, stacklevel=2)
            _atomic.stage("verified")
            _atomic.commit([(tmp, final)], run)
    return final


def write_result(
    result: xr.Dataset,
    path: str | os.PathLike,
    *,
    overwrite: bool = False,
    compute: ComputeFn | None = None,
) -> list[Path]:
    """Write the Dataset of ``superresolve`` to ``path`` (``.tif`` -> COGs, ``.zarr`` -> Zarr).

    A ``.tif`` output gets ``sr`` (its bands, reflectance; the band labels as band descriptions) in
    ``path`` and ``uncertainty`` (per-band standard deviation, reflectance) in ``<stem>_uncertainty.tif``; both are computed in one pass,
    verified, and published together (``path`` last). Returns the paths written.
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


def _check_unfinished(paths: Sequence[Path]) -> None:
    for p in paths:
        if _atomic.journal_path(p).exists():
            raise OutputError(
                f"the publication of {p} was interrupted (journal {_atomic.journal_path(p)}); run the same "
                "command again (it finishes the publication first), or call xr_opensr._io.finish(path)"
            )


def finish(path: str | os.PathLike) -> None:
    """Finish publishing an output whose writer died after committing, and remove stale temporaries."""
    with _atomic.locked(output_paths(path)):
        pass  # taking the lock rolls journals forward and removes what dead runs left


def open_cogs(sr_path: str | os.PathLike, uncertainty_path: str | os.PathLike, *, chunks: Any = None) -> xr.Dataset:
    """Read an ``sr`` COG and an ``uncertainty`` COG (as written by :func:`write_cog`) into one Dataset.

    Refuses a pair whose publication is unfinished or whose ``xr_opensr_run`` tags differ (files of
    two different runs).
    """
    import rioxarray

    paths = [Path(sr_path).expanduser(), Path(uncertainty_path).expanduser()]
    _check_unfinished(paths)
    out, runs = {}, {}
    for name, p in zip(("sr", "uncertainty"), paths, strict=True):
        da = rioxarray.open_rasterio(p, chunks=chunks, mask_and_scale=True)
        runs[name] = da.attrs.pop(RUN_TAG, None)
        names = da.attrs.pop("long_name", None)
        if isinstance(names, tuple | list) and len(names) == da.sizes["band"]:
            da = da.assign_coords(band=[str(n) for n in names])
        out[name] = da
    if runs["sr"] != runs["uncertainty"]:
        raise InputError(
            f"{paths[0]} and {paths[1]} come from different runs (xr_opensr_run {runs['sr']} vs "
            f"{runs['uncertainty']}); they do not belong together: write both again"
        )
    return xr.Dataset(out)


def open_result(path: str | os.PathLike, *, chunks: Any = None) -> xr.Dataset:
    """Read back what :func:`write_result` wrote: a Dataset with ``sr`` and ``uncertainty``."""
    path = Path(path).expanduser()
    if output_kind(path) == "zarr":
        _check_unfinished([path])
        return xr.open_zarr(path, chunks=chunks, decode_coords="all")
    return open_cogs(*output_paths(path), chunks=chunks)
