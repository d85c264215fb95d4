"""The xarray layer: validate -> pick bands -> DN scaling -> dask graph -> coordinates and attributes.

:func:`superresolve` (also ``obj.opensr.superresolve``) builds a lazy :class:`xarray.Dataset` of
4x super-resolved reflectance and its per-pixel uncertainty. Nothing is computed by the call:
the geometry comes from an odc-geo ``GeoBox`` and the data from a dask graph (see ``_graph``).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import numbers
import warnings
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr

from . import _encode, _graph, _kernel, _runtime
from .errors import BandError, GridError, InputError, ModelError, OpenSRWarning

__all__ = ["superresolve", "BAND_ALIASES"]

#: accepted names of each model band (matched case-insensitively): Sentinel-2 ids and common names
BAND_ALIASES: dict[str, tuple[str, ...]] = {
    "B04": ("B04", "B4", "red"),
    "B03": ("B03", "B3", "green"),
    "B02": ("B02", "B2", "blue"),
    "B08": ("B08", "B8", "nir"),
}
_BAND_DIM_NAMES = ("band", "bands", "channel", "channels", "variable", "wavelength")
_RESOLUTION_M = 10.0
_DEFAULT_DN_SCALE = 1e-4  # Sentinel-2 L2A: reflectance = DN / 10000
#: plausible surface reflectance after scaling: slightly negative over dark targets (noise, the L2A
#: offset), above 1 over bright clouds and snow; values outside are wrong scaling or fill values
REFLECTANCE_RANGE = (-0.1, 2.0)


def superresolve(
    obj: xr.DataArray | xr.Dataset,
    samples: int = 10,
    *,
    model: str | Path = "default",
    steps: int | None = None,
    eta: float | None = None,
    seed: int = 0,
    bands: Sequence[Hashable] | Mapping[str, Hashable] | None = None,
    patch: int | None = None,
    overlap: int | None = None,
    batch_size: int | None = None,
    threads: int = 1,
    device: str = "auto",
    dtype: Any = None,
    histogram_matching: bool = True,
    return_samples: bool = False,
    output_dtype: Any = None,
) -> xr.Dataset:
    """Super-resolve Sentinel-2 10 m bands 4x (to 2.5 m), lazily, with per-pixel uncertainty.

    Parameters
    ----------
    obj : DataArray with a band dimension (any dim order; optional ``time`` and other leading
        dims), or Dataset with one variable per band (the odc-stac layout) or with one such
        DataArray as its only spatial variable (a cube saved to Zarr). Regular 10 m grid in a
        projected CRS (rioxarray ``.rio.crs``), metres.
        Values: float reflectance (used as is), or integer DN converted as
        ``DN * scale_factor + add_offset`` from the attrs (``scale_factor``/``add_offset``, or
        per-band ``scales``/``offsets``), else ``DN / 10000`` (also when the attrs are the
        identity 1/0 that rioxarray writes for any GeoTIFF, and for floats that CF decoding made
        from integers on disk without a scale, e.g. a Zarr/netCDF of uint16 DN with a
        ``_FillValue``: ``encoding["dtype"]`` tells). 8-bit integers need a declared scale. A
        non-identity ``scale_factor``/``add_offset`` on float data is applied too. Pixels equal to
        the declared nodata (``nodata``, ``_FillValue``, ``.rio.nodata``) and non-finite values are
        nodata (NaN); a pixel is nodata when any of its bands is. The CRS comes from ``.rio.crs``,
        else from a grid-mapping variable or a ``crs``/``spatial_ref``/``crs_wkt`` attribute.
        Checked when computed (the data are only known then): reflectance outside
        ``REFLECTANCE_RANGE`` (-0.1, 2) after scaling raises InputError; results are clipped at 0,
        and a band that comes out all 0 from input <= 0 warns (OpenSRWarning).
    samples : diffusion samples per patch (>= 1); ``sr`` is their mean, ``uncertainty`` their std.
    model : registered name (``"default"``, ``"tiny"``) or path of a model folder / ``.ckpt``.
    steps, eta : DDIM steps and eta (None = the model's defaults).
    seed : base seed (>= 0). A patch's noise depends only on (seed, patch row, patch column, the
        leading coordinates, e.g. the time stamp): results do not depend on chunks or scheduler.
    bands : input labels of the model bands (default order B04, B03, B02, B08 = red, green, blue,
        nir) as a sequence, or a mapping ``{"B04": label, ...}``. Default: found by name,
        case-insensitive (``B04``/``B4``/``red`` ...), extra bands ignored.
    patch, overlap : LR pixels per patch side and of overlap between neighbours (default: the
        model's ``patch_size`` and ``default_overlap``; ``0 <= overlap <= patch/2``).
    batch_size : (patch, sample) latents per network call, the same in every call (None: the
        model's choice for the device). Results are bit-identical for a given batch size whatever the
        chunking (on the CPU; see the README for GPUs).
    threads : torch intra-op threads per task on the CPU (default 1: dask runs a task per core). Raise
        it when a process has more cores than concurrent tasks (a one-block cube; a dask worker with
        ``nthreads=1`` on several cores). Part of the result: CPU results may differ across thread counts.
    device : "auto" (CUDA if the computing process sees a GPU, else CPU), "cpu", "cuda", "cuda:1".
    dtype : denoiser and decoder dtype: None (float32), "bfloat16" (GPU, or a CPU with AMX/AVX512-BF16),
        "float16" (GPU only), or a torch dtype.
    histogram_matching : match each sample's bands to the LR patch's histograms.
    return_samples : also return the samples (variable ``samples``, extra leading dim ``sample``).
    output_dtype : None/"float32" (reflectance) or "uint16": DN = round(reflectance x 10000), nodata 0,
        CF ``scale_factor``/``_FillValue`` attrs (lossless to 1e-4; see ``xr_opensr._encode``).

    Returns
    -------
    Dataset with ``sr`` and ``uncertainty`` (and ``samples``): float32 reflectance on the 2.5 m
    grid (each 10 m pixel split into 4 x 4; HR centres at the LR centre +-1.25 m and +-3.75 m),
    dims in the input's order (a Dataset input gets a ``band`` dim before y/x), chunks of whole
    patch-grid tiles; CRS and transform written with rioxarray; attrs name the model, version,
    samples, steps, eta, seed, patch, overlap and units. ``uncertainty`` is the per-band sample
    standard deviation times the model's ``std_scale`` (0 when ``samples == 1``); in patch overlaps
    ``sr``, ``uncertainty`` and ``samples`` are blended with the same smooth weights.
    Lazy: computing ``sr`` and ``uncertainty`` together runs the model once per patch.

    Raises
    ------
    InputError, BandError, GridError, ModelError, CheckpointError, DeviceError
        Before anything is computed, naming the fix; when computed: InputError for implausible
        reflectance, ModelError for NaN/inf results of valid pixels.
    """
    # ---- options (cheap, first)
    samples = _positive_int("samples", samples)
    steps = None if steps is None else _positive_int("steps", steps)
    if eta is not None:
        if isinstance(eta, bool) or not isinstance(eta, numbers.Real) or not (math.isfinite(eta) and eta >= 0):
            raise InputError(f"eta must be a real number >= 0 (0 = deterministic DDIM) or None, got {eta!r}")
        eta = float(eta)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise InputError(f"seed must be a non-negative integer, got {seed!r}; e.g. seed=0")
    seed = int(seed)
    batch_size = None if batch_size is None else _positive_int("batch_size", batch_size)
    threads = _positive_int("threads", threads)
    patch = None if patch is None else _positive_int("patch", patch)
    if overlap is not None and (isinstance(overlap, bool) or not isinstance(overlap, numbers.Integral) or overlap < 0):
        raise InputError(f"overlap must be an integer >= 0 (LR pixels), got {overlap!r}")
    for flag, value in (("histogram_matching", histogram_matching), ("return_samples", return_samples)):
        if not isinstance(value, bool | np.bool_):
            raise InputError(f"{flag} must be True or False, got {value!r}")

    output_dtype = _encode.check_output_dtype(output_dtype)

    # ---- input structure and grid (no model needed)
    if not isinstance(obj, xr.DataArray | xr.Dataset):
        raise InputError(
            f"superresolve needs an xarray DataArray or Dataset, got {type(obj).__name__}; "
            "wrap arrays with xr.DataArray(..., dims=('band', 'y', 'x')) and write a CRS with .rio.write_crs"
        )
    y_dim, x_dim = _spatial_dims(obj)
    obj = _with_crs(obj)
    geobox = _lr_geobox(obj, y_dim, x_dim)

    # ---- model (eager, once: cached for the computing threads of this process)
    spec = _runtime.ModelSpec(
        model=_model_id(model), device=_device_id(device), dtype=_dtype_id(dtype), samples=samples,
        steps=steps, eta=eta, histogram_matching=bool(histogram_matching), return_samples=bool(return_samples),
        batch_size=batch_size, cpu_threads=threads,
    )
    net = _runtime.get_model(spec)
    cfg = net.config
    if steps is not None and steps > cfg.schedule.timesteps:
        raise InputError(f"steps must be in [1, {cfg.schedule.timesteps}] for model {cfg.name!r}, got {steps}")
    patch = cfg.patch_size if patch is None else patch
    factor = 2 ** (len(cfg.denoiser.channel_mult) - 1)
    if patch % factor or patch < factor:
        raise InputError(
            f"patch={patch} does not fit model {cfg.name!r}: it must be a multiple of {factor}; "
            f"use patch=None (the model's {cfg.patch_size})"
        )
    overlap = min(cfg.default_overlap, patch // 2) if overlap is None else int(overlap)
    if overlap > patch // 2:
        raise InputError(
            f"overlap={overlap} is too large for patch={patch}: use 0 <= overlap <= {patch // 2} "
            f"(e.g. overlap={cfg.default_overlap})"
        )

    # ---- bands -> (*lead, band, y, x) raw dask array + per-band conversion
    sel = _select_bands(obj, y_dim, x_dim, tuple(cfg.bands), bands)
    lead_dims = [d for d in sel.dims if d not in (sel.band_dim, y_dim, x_dim)]
    data = sel.data
    order = [sel.dims.index(d) for d in (*lead_dims, sel.band_dim, y_dim, x_dim)]
    data = data.transpose(order)
    keys = _lead_keys(obj, lead_dims, [data.shape[i] for i in range(len(lead_dims))])

    kernel = _kernel_for(spec)
    out = _graph.superresolve_array(
        data, kernel, patch=patch, overlap=overlap, n_outputs=spec.n_outputs, seed=seed, scale=cfg.scale,
        lead_keys=keys, band_scale=sel.scale, band_offset=sel.offset, band_nodata=sel.nodata,
    )

    # ---- xarray wrapping: coords from the 4x finer GeoBox, input dim order, attrs
    hr = geobox.zoom_out(1 / cfg.scale)
    hr_y, hr_x = (c.values for c in hr.coordinates.values())
    canon = (*lead_dims, sel.band_dim, y_dim, x_dim)
    coords: dict[Hashable, Any] = {
        name: coord.variable for name, coord in sel.coords.items()
        if name not in (y_dim, x_dim, sel.band_dim) and set(coord.dims) <= set(lead_dims)
    }
    coords[sel.band_dim] = (sel.band_dim, sel.labels)
    coords[y_dim] = (y_dim, hr_y, {"units": "metre", "long_name": f"{y_dim} coordinate of 2.5 m pixel centres"})
    coords[x_dim] = (x_dim, hr_x, {"units": "metre", "long_name": f"{x_dim} coordinate of 2.5 m pixel centres"})
    lead_nd = len(lead_dims)
    token = out.name.rsplit("-", 1)[-1]
    sr = _plane(out, 0, lead_nd, f"opensr-sr-{token}")
    unc = _plane(out, 1, lead_nd, f"opensr-uncertainty-{token}")
    unit_attrs = {"units": "1"}
    variables = {
        "sr": xr.Variable(canon, sr, {"long_name": "super-resolved surface reflectance (mean of samples)", **unit_attrs}),
        "uncertainty": xr.Variable(canon, unc, {
            "long_name": "per-band standard deviation of the samples x model std_scale", **unit_attrs}),
    }
    if return_samples:
        smp = _samples(out, lead_nd, samples, f"opensr-samples-{token}")
        variables["samples"] = xr.Variable(("sample", *canon), smp, {
            "long_name": "super-resolved surface reflectance samples", **unit_attrs})
        coords["sample"] = ("sample", np.arange(samples))
    ds = xr.Dataset(variables, coords=coords)
    ds = ds.transpose(*(["sample"] if return_samples else []), *sel.out_dims)
    ds.attrs = {
        "title": "Sentinel-2 4x super-resolution (xr-opensr)",
        "model": cfg.name,
        "model_version": cfg.version,
        "samples": samples,
        "steps": int(steps if steps is not None else cfg.sampler.steps),
        "eta": float(eta if eta is not None else cfg.sampler.eta),
        "seed": seed,
        "patch": patch,
        "overlap": overlap,
        "scale": cfg.scale,
        "std_scale": float(cfg.std_scale),
        "histogram_matching": int(bool(histogram_matching)),
        "consistency": cfg.consistency.describe(),
        "units": "1 (surface reflectance)",
        "resolution_m": _RESOLUTION_M / cfg.scale,
    }
    ds = ds.rio.write_crs(obj.rio.crs).rio.write_transform(hr.affine)
    return _encode.encode(ds, output_dtype)


# --------------------------------------------------------------------------- options


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise InputError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _model_id(model: Any) -> str:
    """A registered name as is; a path made absolute (workers may run in another directory)."""
    if not isinstance(model, str | Path):
        raise InputError(
            f"model must be a registered name or a path, got {type(model).__name__}; "
            "e.g. model='default', model='tiny' or model='/path/to/model-folder'"
        )
    from .models import registered_models

    if isinstance(model, str) and (model == "default" or model in registered_models()):
        return model
    path = Path(model).expanduser()
    return str(path.resolve()) if path.exists() else str(model)


def _device_id(device: Any) -> str:
    if not isinstance(device, str):
        if type(device).__name__ == "device":  # torch.device, without importing torch
            return str(device)
        raise InputError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    return device


def _dtype_id(dtype: Any) -> str | None:
    if dtype is None or isinstance(dtype, str):
        return dtype
    text = str(dtype)
    if text.startswith("torch."):
        return text[len("torch."):]
    raise InputError(f"dtype must be None, 'float32', 'bfloat16', 'float16' or a torch dtype, got {dtype!r}")


def _kernel_for(spec: _runtime.ModelSpec):
    import functools

    return functools.partial(_checked_kernel, spec)


def _checked_kernel(spec: _runtime.ModelSpec, patches: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """:func:`_kernel.run_patches` between the value checks of its input and its output.

    Runs inside the graph's tasks (the data are only known there): an implausible input raises
    InputError, NaN/inf results for valid pixels raise ModelError, all-zero bands warn.
    """
    _check_reflectance(spec, patches)
    out = _kernel.run_patches(spec, patches, seeds)
    _check_result(spec, patches, out)
    return out


def _check_reflectance(spec: _runtime.ModelSpec, patches: np.ndarray) -> None:
    """(N, C, P, P) reflectance (NaN = nodata) must lie in :data:`REFLECTANCE_RANGE`."""
    lo, hi = REFLECTANCE_RANGE
    low = np.fmin.reduce(patches, axis=(0, 2, 3))  # per band, NaN ignored
    high = np.fmax.reduce(patches, axis=(0, 2, 3))
    if not (np.nanmin(low, initial=lo) < lo or np.nanmax(high, initial=hi) > hi):
        return
    bands = _runtime.get_model(spec).config.bands
    ranges = ", ".join(f"{b} {a:.4g} to {z:.4g}" for b, a, z in zip(bands, low, high) if a < lo or z > hi)
    outside = int(np.count_nonzero((patches < lo) | (patches > hi)))
    if 100 < np.nanmax(high) <= 70_000 and np.nanmin(low) >= lo:
        fix = ("the values are DN (reflectance x 10000) in a float array: declare the scaling, "
               "obj.attrs['scale_factor'] = 1e-4, or convert, obj / 10000")
    else:
        fix = ("an undeclared fill value (declare it: obj.rio.write_nodata(value)), saturated pixels (mask them, "
               "e.g. with the SCL band: xr_opensr.stac.load_s2(..., mask_clouds=True)) or a wrong offset; "
               f"mask such pixels first, e.g. obj.where((refl >= {lo:g}) & (refl <= {hi:g}))")
    raise InputError(
        f"implausible surface reflectance after scaling: {outside} values outside [{lo:g}, {hi:g}] "
        f"({ranges}); likely {fix}"
    )


def _check_result(spec: _runtime.ModelSpec, patches: np.ndarray, out: np.ndarray) -> None:
    """NaN/inf in the mean or std of a valid pixel is a ModelError; an all-zero band warns."""
    valid = np.isfinite(patches).all(axis=1)  # (N, P, P): the kernel's nodata rule
    s = out.shape[-1] // patches.shape[-1]
    hr_valid = valid.repeat(s, axis=1).repeat(s, axis=2)[:, None, None]  # (N, 1, 1, sP, sP)
    broken = hr_valid & ~np.isfinite(out[:, :2])
    if broken.any():
        fix = ("use dtype=None (float32)" if spec.dtype not in (None, "float32")
               else "its weights make the networks overflow: re-export or retrain the model")
        raise ModelError(
            f"model {spec.model!r} returned NaN or infinite values for {int(broken.sum())} values of valid "
            f"pixels (device {spec.device!r}, dtype {spec.dtype or 'float32'}); {fix}"
        )
    weight = hr_valid[:, 0]  # (N, 1, sP, sP)
    mean = np.where(weight, out[:, 0], 0.0)  # (N, C, sP, sP)
    zero = weight.any(axis=(-2, -1)) & ~mean.any(axis=(-2, -1))  # (N, C): valid pixels, all 0
    inputs = np.where(valid[:, None], patches, 0.0)
    hidden = zero & inputs.any(axis=(-2, -1))  # ... though their input was not all 0
    if hidden.any():
        warnings.warn(
            f"super-resolved reflectance is 0 everywhere in {int(hidden.sum())} band(s) of patches whose input "
            "reflectance is <= 0 there: results are clipped at 0 (reflectance is not negative). If the "
            "input should not be negative, check its offset (Sentinel-2 L2A from processing baseline "
            "04.00: reflectance = (DN - 1000) / 10000, which xr_opensr.stac.load_s2 applies)",
            OpenSRWarning,
            stacklevel=2,
        )


# --------------------------------------------------------------------------- grid


def _spatial_dims(obj: xr.DataArray | xr.Dataset) -> tuple[Hashable, Hashable]:
    try:
        return obj.rio.y_dim, obj.rio.x_dim
    except Exception as err:  # rioxarray.exceptions.MissingSpatialDimensionError
        raise GridError(
            f"no spatial dimensions found in dims {tuple(obj.dims)}: expected 'y'/'x' (or "
            "'latitude'/'longitude'); rename them, e.g. obj.rename({'row': 'y', 'col': 'x'}), "
            "or call obj.rio.set_spatial_dims(x_dim=..., y_dim=...)"
        ) from err


def _axis(obj: xr.DataArray | xr.Dataset, dim: Hashable, which: str) -> tuple[float, float]:
    """(first centre, step) of a spatial axis in metres, checked regular."""
    n = obj.sizes[dim]
    if n == 0:
        raise InputError(f"dimension {dim!r} is empty")
    if dim not in obj.coords and any(c.ndim == 2 and dim in c.dims for c in obj.coords.values()):
        raise GridError(
            f"dimension {dim!r} has only 2-D coordinates ({[k for k, c in obj.coords.items() if c.ndim == 2]}): "
            "a curvilinear, rotated or sheared grid; reproject it to a north-up 10 m grid first, e.g. "
            "obj.rio.reproject(obj.rio.crs, resolution=10)"
        )
    if dim not in obj.coords:
        raise GridError(
            f"dimension {dim!r} has no coordinates: assign the pixel-centre coordinates in metres, "
            f"e.g. obj.assign_coords({dim}=...) or load with rioxarray/odc-stac"
        )
    values = np.asarray(obj[dim].values)
    if not np.issubdtype(values.dtype, np.number):
        raise GridError(f"coordinate {dim!r} must be numeric (metres), got dtype {values.dtype}")
    values = values.astype(np.float64)
    if n >= 2:
        diffs = np.diff(values)
        step = float(diffs.mean())
        if not np.allclose(diffs, step, rtol=0, atol=1e-4 * max(1.0, abs(step))):
            raise GridError(
                f"the {dim!r} coordinate is irregular (spacing from {diffs.min():g} to {diffs.max():g} m); "
                "expected a regular 10 m grid: regrid first, e.g. obj.rio.reproject(obj.rio.crs, resolution=10)"
            )
    else:
        transform = obj.rio.transform(recalc=False)
        step = float(transform.a if which == "x" else transform.e)
        if transform.is_identity or step == 0:
            raise GridError(
                f"cannot tell the pixel size of {dim!r} from one pixel: write the transform, e.g. "
                "obj.rio.write_transform(Affine(10, 0, x0, 0, -10, y0))"
            )
    if abs(abs(step) - _RESOLUTION_M) > 1e-3:
        raise GridError(
            f"the {dim!r} pixel size is {abs(step):g} m; expected {_RESOLUTION_M:g} m (the Sentinel-2 10 m "
            "bands B02/B03/B04/B08): resample first, e.g. obj.rio.reproject(obj.rio.crs, resolution=10) "
            "or odc.stac.load(..., resolution=10)"
        )
    return float(values[0]), step


#: attributes that may hold a CRS (WKT, PROJ string, "EPSG:n" or an EPSG code), most specific first
_CRS_ATTRS = ("crs_wkt", "spatial_ref", "crs", "proj:epsg", "epsg_code", "epsg")


def _with_crs(obj: xr.DataArray | xr.Dataset) -> xr.DataArray | xr.Dataset:
    """``obj`` with its CRS readable by rioxarray: where ``obj.rio.crs`` does not find it, the CRS is
    taken from a grid-mapping variable (``grid_mapping`` attr/encoding, a ``spatial_ref``/``crs``
    variable: WKT or CF attributes) or from a CRS attribute of the object or its variables."""
    try:
        if obj.rio.crs is not None:
            return obj
    except Exception as err:  # rioxarray parses attrs["crs"]: pyproj/rasterio CRSError
        raise GridError(
            f"the 'crs' attribute {str(obj.attrs.get('crs'))[:80]!r} is not a CRS ({err}); write the right one, "
            "e.g. obj.rio.write_crs('EPSG:326NN') (its UTM zone)"
        ) from err
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
                    raise GridError(
                        f"the {key!r} attribute {str(attrs[key])[:80]!r} is not a CRS ({err}); write the "
                        "right one, e.g. obj.rio.write_crs('EPSG:326NN') (its UTM zone)"
                    ) from err
        if "grid_mapping_name" in attrs:
            with contextlib.suppress(CRSError):
                return obj.rio.write_crs(CRS.from_cf(dict(attrs)).to_wkt())
    return obj


def _check_north_up(obj: xr.DataArray | xr.Dataset) -> None:
    """A rotated or sheared grid (rioxarray keeps it in the transform, with 2-D coordinates) is refused."""
    try:
        transform = obj.rio.transform(recalc=False)
    except Exception:  # no transform at all: the coordinates decide
        return
    if transform.b != 0 or transform.d != 0:
        raise GridError(
            f"the grid is rotated or sheared (transform a={transform.a:g} b={transform.b:g} d={transform.d:g} "
            f"e={transform.e:g}); xr-opensr needs a north-up 10 m grid: reproject it first, e.g. "
            "obj.rio.reproject(obj.rio.crs, resolution=10)"
        )


def _lr_geobox(obj: xr.DataArray | xr.Dataset, y_dim: Hashable, x_dim: Hashable):
    from affine import Affine
    from odc.geo.geobox import GeoBox

    crs = obj.rio.crs
    if crs is None:
        raise GridError(
            "the input has no CRS: write it with obj.rio.write_crs('EPSG:326NN') (its UTM zone), "
            "or load with odc-stac/rioxarray which set it"
        )
    if not crs.is_projected:
        raise GridError(
            f"the CRS {crs.to_string()} is geographic (degrees); expected a projected CRS in metres: "
            "reproject, e.g. obj.rio.reproject(obj.rio.estimate_utm_crs(), resolution=10)"
        )
    units = (crs.linear_units or "").lower()
    if units not in ("metre", "meter", "m", "metres", "meters"):
        raise GridError(f"the CRS {crs.to_string()} has units {units!r}; expected metres (e.g. UTM)")
    _check_north_up(obj)
    y0, dy = _axis(obj, y_dim, "y")
    x0, dx = _axis(obj, x_dim, "x")
    affine = Affine(dx, 0.0, x0 - dx / 2, 0.0, dy, y0 - dy / 2)
    return GeoBox((obj.sizes[y_dim], obj.sizes[x_dim]), affine, crs.to_wkt())


# --------------------------------------------------------------------------- bands


class _Selection:
    """Model bands picked out of the input: raw data (any dims order, incl. ``band_dim``)."""

    def __init__(self, data: da.Array, dims: list[Hashable], band_dim: Hashable, labels: list,
                 coords: Mapping, out_dims: list[Hashable], scale, offset, nodata) -> None:
        self.data, self.dims, self.band_dim, self.labels = data, dims, band_dim, labels
        self.coords, self.out_dims = coords, out_dims
        self.scale, self.offset, self.nodata = scale, offset, nodata


def _norm(label: Any) -> str:
    return str(label).strip().lower()


def _wanted(model_bands: tuple[str, ...], bands: Any) -> list[tuple[str, list[str]]]:
    """[(model band, accepted normalised labels in priority order)]."""
    if bands is None:
        return [(b, [_norm(a) for a in BAND_ALIASES.get(b.upper(), (b,))]) for b in model_bands]
    if isinstance(bands, Mapping):
        unknown = sorted(set(map(str, bands)) - set(model_bands))
        missing = [b for b in model_bands if b not in bands]
        if unknown or missing:
            raise BandError(
                f"bands mapping must have exactly the model bands {list(model_bands)} as keys; "
                f"unknown {unknown}, missing {missing}"
            )
        return [(b, [_norm(bands[b])]) for b in model_bands]
    if isinstance(bands, str) or not isinstance(bands, Sequence) or len(bands) != len(model_bands):
        raise BandError(
            f"bands must list {len(model_bands)} input labels for the model bands {list(model_bands)} in that "
            f"order (e.g. bands=['red', 'green', 'blue', 'nir']) or map them, got {bands!r}"
        )
    return [(b, [_norm(v)]) for b, v in zip(model_bands, bands)]


def _match(labels: Sequence[Any], wanted: list[tuple[str, list[str]]]) -> tuple[list[int], list[str]]:
    """Indices of the wanted bands in ``labels`` and the model bands not found."""
    normed = [_norm(v) for v in labels]
    found, missing = [], []
    for band, accepted in wanted:
        hit = next((normed.index(a) for a in accepted if a in normed), None)
        if hit is None:
            missing.append(band)
        else:
            found.append(hit)
    return found, missing


def _describe(missing: list[str], bands: Any) -> str:
    if bands is not None:
        return ", ".join(missing)
    return ", ".join(f"{b} ({'/'.join(BAND_ALIASES.get(b, (b,))[1:])})" for b in missing)


def _check_real(dtype: np.dtype, what: str) -> None:
    if np.dtype(dtype).kind not in "iuf":
        raise InputError(
            f"{what} has dtype {np.dtype(dtype)}; expected real numbers (float reflectance or integer DN): "
            "convert first, e.g. obj.astype('float32') (complex data: take obj.real or abs(obj))"
        )


def _as_dask(data: Any, dims: Sequence[Hashable], whole: Sequence[Hashable]) -> da.Array:
    """Dask view of the data; numpy data get chunks of one leading element and whole ``whole`` dims
    (band), spatial chunks of ``TARGET_BLOCK_LR`` pixels (the graph re-chunks to whole tiles)."""
    if isinstance(data, da.Array):
        return data
    chunks = tuple(-1 if d in whole else 1 for d in dims[:-2]) + (_graph.TARGET_BLOCK_LR,) * 2
    return da.from_array(np.asarray(data), chunks=chunks)


def _per_band(value: Any, picks: Sequence[int], n: int, name: str) -> np.ndarray | None:
    if value is None:
        return None
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
    for key in ("nodata", "_FillValue", "missing_value"):
        for source in (obj.attrs,) if disk is not None else (obj.attrs, obj.encoding):
            if key in source and source[key] is not None:
                return float(np.asarray(source[key]).reshape(-1)[0])
    try:
        value = obj.rio.nodata
    except Exception:  # pragma: no cover - rioxarray edge cases
        value = None
    return None if value is None else float(value)


def _conversion(obj: xr.DataArray, picks: Sequence[int], n: int):
    """Per-band (scale, offset) of the raw -> reflectance conversion, None = identity.

    Integer data whose attrs declare no conversion, or only the identity (rioxarray writes
    ``scale_factor=1.0, add_offset=0.0`` for every GeoTIFF), are DN: reflectance = DN / 10000.
    So are floats that CF decoding made from integers without a scale (Zarr/netCDF ``_FillValue``):
    their encoding names the integer dtype on disk. 8-bit integers need a declared scale.
    """
    attrs, dtype = obj.attrs, obj.dtype
    scale = attrs.get("scale_factor", attrs.get("scales"))
    offset = attrs.get("add_offset", attrs.get("offsets"))
    s = None if scale is None else _per_band(scale, picks, n, "scale_factor")
    o = None if offset is None else _per_band(offset, picks, n, "add_offset")
    identity = (s is None or np.all(s == 1.0)) and (o is None or np.all(o == 0.0))
    if identity:
        disk, scaled = _cf_decoded(obj)
        raw = np.dtype(dtype) if disk is None else disk
        if raw.kind not in "iu" or scaled:
            return None, None
        if raw.itemsize == 1:
            raise InputError(
                f"{obj.name or 'the data'!r} holds {raw} values without a declared scale: Sentinel-2 L2A DN "
                "are 16-bit (reflectance x 10000), and 8-bit images are usually true-colour renderings "
                "(TCI), which are not reflectance. Use the L2A bands (e.g. xr_opensr.stac.load_s2), or "
                "declare the scale if these are reflectance x N: obj.attrs['scale_factor'] = 1 / N"
            )
        return np.full(len(picks), _DEFAULT_DN_SCALE), None
    return (np.ones(len(picks)) if s is None else s), (np.zeros(len(picks)) if o is None else o)


def _select_bands(obj, y_dim, x_dim, model_bands: tuple[str, ...], bands: Any) -> _Selection:
    wanted = _wanted(model_bands, bands)
    if isinstance(obj, xr.Dataset):
        spatial = [k for k, v in obj.data_vars.items() if y_dim in v.dims and x_dim in v.dims]
        if len(spatial) != 1 or obj[spatial[0]].ndim < 3:
            return _select_from_dataset(obj, y_dim, x_dim, model_bands, wanted, bands)
        obj = obj[spatial[0]]  # one cube variable with a band dim (e.g. a DataArray saved to Zarr)
    others = [d for d in obj.dims if d not in (y_dim, x_dim)]
    candidates = []
    for d in others:
        labels = _dim_labels(obj, d)
        found, missing = _match(labels, wanted)
        candidates.append((d, labels, found, missing))
    full = [c for c in candidates if not c[3]]
    if not full:
        named = [c for c in candidates if str(c[0]).lower() in _BAND_DIM_NAMES]
        if not named:
            raise BandError(
                f"no band dimension in dims {tuple(obj.dims)}: expected a dim such as 'band' whose labels "
                f"name the bands {list(model_bands)}; e.g. ds.to_dataarray('band') for a Dataset, or "
                "obj.expand_dims(band=[...])"
            )
        d, labels, _, missing = named[0]
        raise BandError(
            f"missing bands {_describe(missing, bands)} in dim {d!r} with labels {list(labels)}; "
            f"pass bands=[...] naming the input labels of {list(model_bands)} in that order, "
            f"or label the dim: obj.assign_coords({d}=[...])"
        )
    band_dim, labels, picks, _ = full[0]
    _check_real(obj.dtype, f"DataArray {obj.name!r}" if obj.name is not None else "the DataArray")
    spatial_last = obj.transpose(..., y_dim, x_dim).dims
    data = _as_dask(obj.transpose(*spatial_last).data, spatial_last, (band_dim,))
    data = data.transpose([spatial_last.index(d) for d in obj.dims])
    axis = obj.dims.index(band_dim)
    data = data[(slice(None),) * axis + (list(picks),)]
    n = obj.sizes[band_dim]
    scale, offset = _conversion(obj, picks, n)
    nodata = _nodata_of(obj)
    coords = {k: v for k, v in obj.coords.items()}
    return _Selection(
        data, list(obj.dims), band_dim, [labels[i] for i in picks], coords, list(obj.dims),
        scale, offset, None if nodata is None else np.full(len(picks), nodata),
    )


def _dim_labels(obj: xr.DataArray, dim: Hashable) -> list:
    n = obj.sizes[dim]
    if dim in obj.coords:
        labels = list(obj[dim].values)
        if all(isinstance(v, numbers.Integral | np.integer) for v in labels):
            names = obj.attrs.get("long_name")  # rioxarray: band descriptions of a GeoTIFF
            if isinstance(names, list | tuple) and len(names) == n:
                return list(names)
        return labels
    return list(range(n))


def _select_from_dataset(ds, y_dim, x_dim, model_bands, wanted, bands) -> _Selection:
    names = [k for k, v in ds.data_vars.items() if y_dim in v.dims and x_dim in v.dims]
    picks, missing = _match(names, wanted)
    if missing:
        raise BandError(
            f"missing bands {_describe(missing, bands)} among the Dataset variables {names}; "
            f"pass bands=[...] naming the variables of {list(model_bands)} in that order, "
            "or rename them, e.g. ds.rename({'b4': 'red'})"
        )
    chosen = [ds[names[i]] for i in picks]
    dims = list(chosen[0].dims)
    for var in chosen:
        _check_real(var.dtype, f"variable {var.name!r}")
        if set(var.dims) != set(dims):
            raise InputError(
                f"band variables have different dims ({var.name!r}: {var.dims}, {chosen[0].name!r}: "
                f"{tuple(dims)}); align them first, e.g. ds[...].broadcast_like(...)"
            )
    spatial_last = list(chosen[0].transpose(..., y_dim, x_dim).dims)
    back = [spatial_last.index(d) for d in dims]
    arrays = [_as_dask(v.transpose(*spatial_last).data, spatial_last, ()).transpose(back) for v in chosen]
    dtype = np.result_type(*[v.dtype for v in chosen])
    axis = dims.index(y_dim)
    data = da.stack([a.astype(dtype) for a in arrays], axis=axis)
    all_dims = [*dims[:axis], "band", *dims[axis:]]
    scales, offsets, nodatas = [], [], []
    for var in chosen:
        s, o = _conversion(var, [0], 1)
        scales.append(None if s is None else float(s[0]))
        offsets.append(None if o is None else float(o[0]))
        nd = _nodata_of(var)
        nodatas.append(np.nan if nd is None else nd)
    scale = None if all(s is None for s in scales) else np.array([1.0 if s is None else s for s in scales])
    offset = None if all(o is None for o in offsets) else np.array([0.0 if o is None else o for o in offsets])
    nodata = None if all(np.isnan(nodatas)) else np.array(nodatas)
    return _Selection(
        data, all_dims, "band", [names[i] for i in picks], dict(ds.coords), all_dims, scale, offset, nodata,
    )


# --------------------------------------------------------------------------- seeds, output planes


def _normalise(value: Any) -> str:
    if isinstance(value, np.datetime64):
        return "t" + str(int(value.astype("datetime64[ns]").astype(np.int64)))
    if isinstance(value, float | np.floating):
        return "f" + float(value).hex()
    if isinstance(value, numbers.Integral | np.integer):
        return "i" + str(int(value))
    return "s" + str(value)


def _lead_keys(obj, lead_dims: list[Hashable], shape: list[int]) -> np.ndarray:
    """(*lead) uint64 seed keys: a stable hash of each element's leading coordinates.

    A leading dim without a coordinate contributes its index. A scalar ``time`` coordinate counts
    as a ``time`` dim of size 1, so ``cube.isel(time=k)`` draws the same noise as ``cube`` at k.
    """
    per_dim = []
    for d, n in zip(lead_dims, shape):
        values = obj[d].values if d in obj.coords else np.arange(n)
        per_dim.append([f"{d}={_normalise(v)}" for v in values])
    extra = ""
    if "time" not in lead_dims and "time" in obj.coords and obj["time"].ndim == 0:
        extra = f"time={_normalise(obj['time'].values[()])}"
    keys = np.empty(tuple(shape), dtype=np.uint64)
    for idx in np.ndindex(*shape):
        parts = sorted([extra] * bool(extra) + [per_dim[a][i] for a, i in enumerate(idx)])
        if not parts:
            keys[idx] = 0
            continue
        digest = hashlib.blake2b("|".join(parts).encode(), digest_size=8).digest()
        keys[idx] = int.from_bytes(digest, "little")
    return keys


def _pick(block: np.ndarray, *, index: tuple) -> np.ndarray:
    return block[index]


def _plane(out: da.Array, k: int, lead_nd: int, name: str) -> da.Array:
    """(*lead, K, C, H, W) -> plane k (*lead, C, H, W), a lazy slice named ``opensr-...``."""
    index = (slice(None),) * lead_nd + (k,)
    return da.map_blocks(
        _pick, out, index=index, drop_axis=lead_nd, name=name, dtype=np.float32,
        meta=np.empty((0,) * (out.ndim - 1), dtype=np.float32),
    )


def _pick_samples(block: np.ndarray, *, index: tuple, axis: int) -> np.ndarray:
    return np.moveaxis(block[index], axis, 0)


def _samples(out: da.Array, lead_nd: int, samples: int, name: str) -> da.Array:
    """(*lead, K, C, H, W) -> samples (S, *lead, C, H, W), a lazy slice named ``opensr-samples-...``."""
    index = (slice(None),) * lead_nd + (slice(2, 2 + samples),)
    chunks = ((samples,), *out.chunks[:lead_nd], *out.chunks[lead_nd + 1:])
    return da.map_blocks(_pick_samples, out, index=index, axis=lead_nd, chunks=chunks, name=name,
                         dtype=np.float32, meta=np.empty((0,) * out.ndim, dtype=np.float32))
