"""The xarray layer, orchestration only: options -> inputs -> model spec -> dask graph -> Dataset.

:func:`superresolve` (also ``obj.opensr.superresolve``) builds a lazy :class:`xarray.Dataset` of
4x super-resolved reflectance and its per-pixel uncertainty. Nothing is computed by the call:
the options are checked once (:class:`~xr_opensr.options.RunOptions`), the grid and its GeoBox come from
``geometry``, the bands (DN -> reflectance rule, seed keys) from ``_inputs`` and the data from a dask
graph (``_graph``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Hashable
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr

from . import _encode, _graph, _inputs, _runtime, geometry
from . import looks as _looks
from .errors import InputError
from .looks import LOOK_DIM
from .models.base import ModelInfo
from .options import RunOptions, model20_id, takes_options
from .sentinel2 import GRID_RESOLUTION_M

__all__ = ["superresolve"]


@takes_options("obj")
def superresolve(obj: xr.DataArray | xr.Dataset, samples: int = 10, **options: Any) -> xr.Dataset:
    """Super-resolve Sentinel-2 bands 4x (to 2.5 m), lazily, with per-pixel uncertainty.

    The four 10 m bands (B04, B03, B02, B08) go through the diffusion model (``model``); the six
    native 20 m bands (B05, B06, B07, B8A, B11, B12), when asked for, through the 20 m model
    (``model20``), guided by the four 10 m bands and their super-resolution in the same patch.

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
        nodata (NaN), per band: a pixel is nodata in every band when any of the four 10 m bands is
        (the model's input and the 20 m bands' guide); a 20 m band's nodata is NaN in that band only.
        The CRS comes from ``.rio.crs``,
        else from a grid-mapping variable or a ``crs``/``spatial_ref``/``crs_wkt`` attribute.
        Checked when computed (the data are only known then): reflectance outside
        ``REFLECTANCE_RANGE`` (-0.1, 2) after scaling raises InputError; results are clipped at 0,
        and a band that comes out all 0 from input <= 0 warns (OpenSRWarning).
    {options}

    Returns
    -------
    Dataset with ``sr`` and ``uncertainty`` (and ``samples``): float32 reflectance on the 2.5 m
    grid (each 10 m pixel split into 4 x 4; HR centres at the LR centre +-1.25 m and +-3.75 m),
    dims in the input's order (a Dataset input gets a ``band`` dim before y/x), chunks of whole
    patch-grid tiles; CRS and transform written with rioxarray; attrs name the model, version,
    samples, steps, eta, seed, patch, overlap, tiling and units. ``uncertainty`` is the per-band standard
    deviation (a diffusion-only model: of its samples, times the model's ``std_scale``; 0 when
    ``samples == 1``). A convolutional model (the default's mean network and spread head: it declares
    its receptive-field halo) runs on tiles of ``CROP_TILE`` (256) LR pixels plus the halo, cropped to
    their centre (``tiling="crop"``): each pixel is that of the whole-image run (near nodata, the fill of
    the nodata pixels is per tile). Otherwise (diffusion samples, ``return_samples``, a ``patch`` or
    ``overlap`` given) the patches are blended in their overlaps with smooth weights (``tiling="blend"``),
    and the samples then moved to ``sr`` and ``uncertainty``.
    Lazy: computing ``sr`` and ``uncertainty`` together runs the model once per patch.

    Raises
    ------
    InputError, BandError, GridError, ModelError, CheckpointError, DeviceError
        Before anything is computed, naming the fix; when computed: InputError for implausible
        reflectance, ModelError for NaN/inf results of valid pixels.
    """
    # 1. options (cheap, first): each checked once
    opts = RunOptions(samples, **options)

    # 2. input structure and grid (no model needed)
    obj, y_dim, x_dim, geobox = geometry.grid(obj)

    # 3. model (eager, once: cached for the computing threads of this process); read through its info only
    spec = opts.spec()
    info = _runtime.get_model(spec).info
    if opts.samples == 0 and not info.mean_without_samples:
        raise InputError(f"samples=0 (the fast deterministic path) needs a model with a mean path (a mean network, "
                         f"e.g. the default); {info.name!r} has none: use samples >= 1")
    patch, overlap, crop = _patch_grid(info, opts)

    # 4. bands -> (*lead, *whole core dims, band, y, x) raw dask array + per-band conversion -> graph
    if opts.looks is not None and LOOK_DIM not in info.whole_dims:
        raise InputError(f"looks={opts.looks} needs a multi-date model (model='default' or 'multidate'); {info.name!r} "
                         "is single-date: leave looks=None")
    if LOOK_DIM in info.whole_dims:
        inp, look_table, look_shift = _looks_of(obj, y_dim, x_dim, info, opts)
    else:
        inp = _inputs.model_input(obj, y_dim, x_dim, tuple(info.bands), opts.bands, whole=info.whole_dims)
    samples_grid: dict[str, int] = {}
    if crop and info.context is not None:
        raise InputError(f"tiling='crop' with model {info.name!r}, which takes a scene-level input ({info.context!r}) "
                         "per patch: use tiling='blend' (the default)")
    if crop and opts.return_samples:
        spec, out, samples_grid = _cropped_with_blended_samples(inp, spec, info, opts, geobox, patch, overlap)
    else:
        context = None
        if info.context == "look_shift" and LOOK_DIM in info.whole_dims:
            context = look_shift
        elif info.context is not None:
            raise InputError(f"model {info.name!r} asks for the context {info.context!r}, which this version computes "
                             "only for a model whose core dims start with 'look' ('look_shift'); fix the model's info")
        spec, out = _build_graph(inp, spec, info, opts, geobox, patch=patch, overlap=overlap, crop=crop,
                                 context=context)

    # 5. xarray wrapping: coords from the 4x finer GeoBox, input dim order, attrs
    ds = _wrap(out, inp, spec, opts, geometry.hr_geobox(geobox, info.scale), y_dim, x_dim, obj.rio.crs,
               patch=patch, overlap=overlap, crop=crop)
    ds.attrs.update(samples_grid)
    if LOOK_DIM in info.whole_dims:
        ds = ds.assign_coords(look_time=(("time", LOOK_DIM), _looks.look_times(inp.selection.coords["time"].values,
                                                                                 look_table)))
        # each look's scene-level offset: a lazy coordinate like look_time, chunked along the lead dims as sr
        shifts = look_shift.rechunk({i: ds["sr"].chunksizes[d] for i, d in enumerate(inp.lead_dims)})
        ds = ds.assign_coords({_looks.SHIFT_DIM: ["y", "x"]})
        ds = ds.assign_coords(look_shift=xr.Variable((*inp.lead_dims, LOOK_DIM, _looks.SHIFT_DIM), shifts,
                                                     _looks.look_shift_attrs(_looks.central_window(*inp.data.shape[-2:]))))
        ds.attrs.update(looks=int(opts.looks or _looks.DEFAULT_LOOKS), window=str(opts.window))
    return _encode.encode(ds, opts.output_dtype)


def _looks_of(obj: Any, y_dim: Hashable, x_dim: Hashable, info: ModelInfo, opts: RunOptions
              ) -> tuple[_inputs.ModelInput, Any, da.Array]:
    """The model input of a multi-date model: (*lead, look, band, y, x), the looks of each date
    (:mod:`xr_opensr.looks`), the look table, and each look's scene-level offset from its date (lazy
    (*lead, look, 2), :func:`xr_opensr.looks.look_shifts`)."""
    inp = _inputs.model_input(obj, y_dim, x_dim, tuple(info.bands), opts.bands)
    time_dim = _looks.time_dim_of(inp.lead_dims)
    if inp.selection.bands20(tuple(info.bands)):
        raise InputError("multi-date super-resolution is for the four 10 m bands; leave bands=None (or pick B04, B03, "
                         "B02, B08), and super-resolve the 20 m bands single-date")
    if "time" not in inp.selection.coords:
        raise InputError("multi-date super-resolution needs the dates: the time dim has no coordinate; assign one "
                         "(obj.assign_coords(time=[...]))")
    looks = opts.looks or _looks.DEFAULT_LOOKS
    times, time_axis = inp.selection.coords["time"].values, inp.lead_dims.index(time_dim)
    window = _looks.window_of("window", opts.window)
    data, table = _looks.gather_looks(inp.data, times, time_axis, looks, window)
    sel = inp.selection
    shifts = _looks.look_shifts(inp.data, times, time_axis, looks, window, scale=sel.scale, offset=sel.offset,
                                nodata=sel.nodata)
    return inp._replace(data=data, whole_dims=(LOOK_DIM,)), table, shifts


# --------------------------------------------------------------------------- checks against the model


#: the centre (LR pixels) of the tiles of a convolutional model (one that declares its receptive-field
#: halo), cropped to it: each output pixel is computed (1 + 2 halo / CROP_TILE)^2 times, once per tile
#: call of (CROP_TILE + 2 halo)^2 pixels (benchmarks/bench_tile.py, docs/throughput.md)
CROP_TILE = 256


def _patch_grid(info: ModelInfo, opts: RunOptions) -> tuple[int, int, bool]:
    """(patch, overlap, crop) in LR pixels, checked against what the model declares (``steps`` too).

    With ``tiling="crop"``, a model that declares its receptive-field halo (``info.halo``: its mean and
    uncertainty are local) runs on tiles of :data:`CROP_TILE` plus the halo on each side, cropped to their
    centre (``crop``: each output pixel is that of the whole-image run; diffusion samples, when asked for,
    are blended on the model's own patch grid); else the model's patch grid, blended."""
    steps, patch, overlap = opts.steps, opts.patch, opts.overlap
    if steps is not None and info.sampling is not None and steps > info.sampling.max_steps:
        raise InputError(f"steps must be in [1, {info.sampling.max_steps}] for model {info.name!r}, got {steps}")
    if opts.tiling == "crop":
        if info.halo is None:
            raise InputError(f"tiling='crop' needs a model that declares its receptive-field halo (a fully convolutional "
                             f"mean and uncertainty); {info.name!r} does not: use tiling='blend'")
        if patch is not None or overlap is not None:
            raise InputError("tiling='crop' sets the tiles itself (256 LR pixels plus the model's halo): leave patch and "
                             "overlap None, or use tiling='blend' with them")
        multiple = math.lcm(info.patch_multiple, 2)  # even: 20 m pixels stay whole
        size = max(CROP_TILE, 2 * info.halo) + 2 * info.halo  # the overlap is at most half a patch
        return -(-size // multiple) * multiple, 2 * info.halo, True
    patch = info.patch if patch is None else patch
    factor = info.patch_multiple
    if patch % factor or patch < factor:
        raise InputError(f"patch={patch} does not fit model {info.name!r}: it must be a multiple of {factor}; "
                         f"use patch=None (the model's {info.patch})")
    overlap = min(info.overlap, patch // 2) if overlap is None else overlap
    if overlap > patch // 2:
        raise InputError(f"overlap={overlap} is too large for patch={patch}: use 0 <= overlap <= {patch // 2} "
                         f"(e.g. overlap={info.overlap})")
    return patch, overlap, False


def _guided_spec(spec: _runtime.ModelSpec, model20: Any, bands20: tuple[str, ...], geobox: Any, patch: int,
                 overlap: int, crop: bool) -> _runtime.ModelSpec:
    """``spec`` with the 20 m path (checked, its model loaded): the 20 m grid must tile the patch grid."""
    if spec.options.return_samples:
        raise InputError(f"return_samples=True with the 20 m bands {list(bands20)}: the 20 m model gives a mean and a "
                         "standard deviation, not samples; use return_samples=False, or ask for 10 m bands only")
    if crop:
        raise InputError(f"tiling='crop' with the 20 m bands {list(bands20)}: the 20 m path is validated on the model's "
                         "patch grid (its least-squares fits are per patch); use tiling='blend' (the default), or ask "
                         "for 10 m bands only")
    if patch % 2 or overlap % 2:
        raise InputError(f"patch={patch} and overlap={overlap} with 20 m bands: both must be even (10 m pixels), so "
                         "that every patch starts on the 20 m grid; e.g. overlap=8")
    spec = dataclasses.replace(spec, ref=dataclasses.replace(spec.ref, model20=model20_id(model20)),
                               bands20=bands20, phase20=geometry.phase20(geobox))
    _runtime.get_model(spec)  # eager: a missing or broken 20 m model fails here, not in a task
    return spec


# --------------------------------------------------------------------------- graph


def _build_graph(inp: _inputs.ModelInput, spec: _runtime.ModelSpec, info: ModelInfo, opts: RunOptions, geobox: Any, *,
                 patch: int, overlap: int, crop: bool, context: da.Array | None = None
                 ) -> tuple[_runtime.ModelSpec, da.Array]:
    """The lazy (*lead, K, C, H, W) output of the selected bands, and ``spec`` with the 20 m path
    (the model's chain with the 20 m model) when 20 m bands are among them; ``context``: the model's
    scene-level input (``info.context``), per leading element."""
    sel = inp.selection
    bands20 = sel.bands20(tuple(info.bands))
    if bands20:
        spec = _guided_spec(spec, opts.model20, bands20, geobox, patch, overlap, crop)
    out = _graph.superresolve_array(
        inp.data, _inputs.kernel_for(spec), patch=patch, overlap=overlap, n_outputs=spec.n_outputs, seed=opts.seed,
        scale=info.scale, lead_keys=inp.keys, band_scale=sel.scale, band_offset=sel.offset, band_nodata=sel.nodata,
        guide_channels=len(info.bands), whole=len(info.whole_dims), crop=crop, reference_first=info.reference_first,
        context=context,
    )
    return spec, out


def _cropped_with_blended_samples(inp: _inputs.ModelInput, spec: _runtime.ModelSpec, info: ModelInfo,
                                  opts: RunOptions, geobox: Any, patch: int, overlap: int
                                  ) -> tuple[_runtime.ModelSpec, da.Array, dict[str, int]]:
    """``tiling="crop"`` with ``return_samples``: the mean and std from the cropped tiles, the diffusion
    samples blended on the model's own patch grid (they are not local), on the mean's blocks; and the
    samples' grid for the attrs."""
    plain = dataclasses.replace(spec, options=dataclasses.replace(spec.options, return_samples=False))
    _, out = _build_graph(inp, plain, info, opts, geobox, patch=patch, overlap=overlap, crop=True)
    grid = {"samples_patch": info.patch, "samples_overlap": min(info.overlap, info.patch // 2)}
    spec, out_s = _build_graph(inp, spec, info, opts, geobox, patch=grid["samples_patch"],
                               overlap=grid["samples_overlap"], crop=False)
    lead = out.ndim - 4
    samples = out_s[(slice(None),) * lead + (slice(2, None),)].rechunk((*out.chunks[:lead], -1, *out.chunks[lead + 1:]))
    return spec, da.concatenate([out, samples], axis=lead).rechunk({lead: -1}), grid


# --------------------------------------------------------------------------- output


def _wrap(out: da.Array, inp: _inputs.ModelInput, spec: _runtime.ModelSpec, opts: RunOptions, hr: Any,
          y_dim: Hashable, x_dim: Hashable, crs: Any, *, patch: int, overlap: int, crop: bool) -> xr.Dataset:
    """The graph's (*lead, K, C, H, W) output as :func:`superresolve`'s Dataset (before encoding): ``sr``,
    ``uncertainty``, the model's extra per-pixel counts as uint8 without the band dim, and ``samples`` with
    ``return_samples``; on the 4x finer GeoBox ``hr`` (``crs`` and its transform written), in the input's dim
    and band order, with the attrs that describe the run (from the model's info: the model itself, then what
    a chain adds)."""
    sel, lead_dims = inp.selection, inp.lead_dims
    info = _runtime.get_model(spec.ref).info
    samples = opts.samples if opts.return_samples else 0
    canon = (*lead_dims, sel.band_dim, y_dim, x_dim)
    coords: dict[Hashable, Any] = {
        name: coord.variable for name, coord in sel.coords.items()
        if name not in (y_dim, x_dim, sel.band_dim) and set(coord.dims) <= set(lead_dims)
    }
    coords[sel.band_dim] = (sel.band_dim, sel.labels)
    coords.update(geometry.hr_coords(hr, y_dim, x_dim))
    lead_nd = len(lead_dims)
    token = out.name.rsplit("-", 1)[-1]
    sr = _plane(out, 0, lead_nd, f"opensr-sr-{token}")
    unc = _plane(out, 1, lead_nd, f"opensr-uncertainty-{token}")
    unit_attrs = {"units": "1"}
    variables = {
        "sr": xr.Variable(canon, sr, {"long_name": "super-resolved surface reflectance (mean of samples)", **unit_attrs}),
        "uncertainty": xr.Variable(canon, unc, {"long_name": "calibrated per-band standard deviation of sr (the "
                                                             "samples' standard deviation)", **unit_attrs}),
    }
    for k, name in enumerate(info.extra_outputs, start=2):
        plane = _plane(out, k, lead_nd, f"opensr-{name}-{token}")[(slice(None),) * lead_nd + (0,)]
        count = da.map_blocks(_count, plane, dtype=np.uint8, meta=np.empty((0,) * plane.ndim, dtype=np.uint8))
        variables[name] = xr.Variable([d for d in canon if d != sel.band_dim], count,
                                      {"long_name": _EXTRA_NAMES.get(name, name), "units": "1"})
    if samples:
        smp = _samples(out, lead_nd, samples, f"opensr-samples-{token}")
        variables["samples"] = xr.Variable(("sample", *canon), smp, {
            "long_name": "super-resolved surface reflectance samples (mean sr, std min(uncertainty, "
                         "sr x sqrt(samples)), >= 0)", **unit_attrs})
        coords["sample"] = ("sample", np.arange(samples))
    ds = xr.Dataset(variables, coords=coords)
    ds = ds.transpose(*(["sample"] if samples else []), *sel.out_dims, missing_dims="ignore")
    if sel.picks != list(range(len(sel.labels))):
        ds = ds.isel({sel.band_dim: sel.picks})
    sampling = {} if info.sampling is None else {
        "steps": int(opts.steps if opts.steps is not None else info.sampling.steps),
        "eta": float(opts.eta if opts.eta is not None else info.sampling.eta),
    }
    ds.attrs = {
        "title": "Sentinel-2 4x super-resolution (xr-opensr)", "model": info.name, "model_version": info.version,
        "samples": opts.samples, **sampling, "seed": opts.seed, "patch": patch, "overlap": overlap,
        "tiling": "crop" if crop else "blend",
        "scale": info.scale, "std_scale": float(info.std_scale), "histogram_matching": int(opts.histogram_matching),
        "consistency": info.consistency, "units": "1 (surface reflectance)",
        "resolution_m": GRID_RESOLUTION_M / info.scale, **dict(_runtime.get_model(spec).info.attrs),
    }
    return ds.rio.write_crs(crs).rio.write_transform(hr.affine)


def _count(block: np.ndarray) -> np.ndarray:
    """A blended count plane as uint8: rounded up (a pixel counts 1 only where every patch that covers it
    with weight counts 1), 0 where NaN (nodata)."""
    with np.errstate(invalid="ignore"):
        # (the blend's float32 rounding of equal counts is ~1e-7; a patch at the start of its ramp weighs >= 6e-4)
        return np.where(np.isfinite(block), np.ceil(block - 1e-5), 0).astype(np.uint8)


#: the long names of the per-pixel counts a model may give (``ModelInfo.extra_outputs``)
_EXTRA_NAMES = {"looks": "looks used at the pixel (the date itself included; 0: nodata; over the overlapping patches, "
                         "their weighted mean rounded up)",
                "changed": "looks left out at the pixel: they disagreed beyond their noise (change, unmasked cloud or "
                           "shadow)"}


def _pick(block: np.ndarray, *, index: tuple) -> np.ndarray:
    return block[index]


def _plane(out: da.Array, k: int, lead_nd: int, name: str) -> da.Array:
    """(*lead, K, C, H, W) -> plane k (*lead, C, H, W), a lazy slice named ``opensr-...``."""
    index = (slice(None),) * lead_nd + (k,)
    return da.map_blocks(_pick, out, index=index, drop_axis=lead_nd, name=name, dtype=np.float32,
                         meta=np.empty((0,) * (out.ndim - 1), dtype=np.float32))


def _moment_samples(planes: np.ndarray, *, samples: int) -> np.ndarray:
    """Planes (K, *lead, C, H, W) of the graph's output -> its samples (S, *lead, C, H, W), moved per
    pixel to mean ``sr`` (plane 0) and standard deviation ``uncertainty`` (plane 1), none negative.

    The blend averages each sample over the overlapping patches like ``sr`` and ``uncertainty``, which
    keeps the samples' mean but shrinks their spread (independent samples average out); moving them
    back (:func:`xr_opensr.models.pipeline.samples_with_moments`) makes the samples agree with ``sr``
    and ``uncertainty`` everywhere, and scales the raw spread of a diffusion-only model by its
    ``std_scale`` as ``uncertainty`` is. One sample is left as it is (it equals ``sr``).
    """
    if samples == 1:
        return planes[2:3].copy()
    # numpy only, but it imports torch with the models (as the kernel that made the block does)
    from .models.pipeline import samples_with_moments

    return samples_with_moments(planes[2 : 2 + samples], planes[0], planes[1], axis=0)


def _samples(out: da.Array, lead_nd: int, samples: int, name: str) -> da.Array:
    """(*lead, K, C, H, W) -> samples (S, *lead, C, H, W) with mean ``sr`` and std ``uncertainty``
    (:func:`_moment_samples`), a lazy map named ``opensr-samples-...``."""
    planes = da.moveaxis(out, lead_nd, 0)  # (K, *lead, C, H, W): K is one chunk
    return da.map_blocks(_moment_samples, planes, samples=samples, chunks=((samples,), *planes.chunks[1:]),
                         name=name, dtype=np.float32, meta=np.empty((0,) * out.ndim, dtype=np.float32))
