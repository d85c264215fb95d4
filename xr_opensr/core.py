"""The xarray layer, orchestration only: options -> inputs -> model spec -> dask graph -> Dataset.

:func:`superresolve` (also ``obj.opensr.superresolve``) builds a lazy :class:`xarray.Dataset` of
4x super-resolved reflectance and its per-pixel uncertainty. Nothing is computed by the call:
the input is prepared by ``_inputs`` (grid, GeoBox, bands, DN -> reflectance rule, seed keys), the
geometry comes from an odc-geo ``GeoBox`` and the data from a dask graph (``_graph``).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr

from . import _encode, _graph, _inputs, _runtime
from ._inputs import REFLECTANCE_RANGE
from .errors import InputError
from .sentinel2 import BAND_ALIASES, GRID_RESOLUTION_M

__all__ = ["superresolve", "BAND_ALIASES", "REFLECTANCE_RANGE"]


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
    model20: str | Path = "s2-20m",
) -> xr.Dataset:
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
    samples : samples per patch (>= 0). A diffusion-only model (``"tiny"``, LDSR-S2 v1): ``sr`` is
        their mean, ``uncertainty`` their std times the model's ``std_scale``. The default model (v2):
        both come from its mean network and calibrated spread, and the diffusion model runs only for
        ``return_samples``; ``samples=0`` is the fast deterministic path: the mean alone,
        ``uncertainty`` NaN (models without a mean network refuse it when computed).
    model : registered name (``"default"``, ``"tiny"``) or path of a model folder / ``.ckpt``.
    steps, eta : DDIM steps and eta (None = the model's defaults).
    seed : base seed (>= 0). A patch's noise depends only on (seed, patch row, patch column, the
        leading coordinates, e.g. the time stamp): results do not depend on chunks or scheduler.
    bands : the bands to super-resolve. None (default): the 10 m bands B04, B03, B02, B08 (red,
        green, blue, nir), found by name, case-insensitive (``B04``/``B4``/``red`` ...), extra bands
        ignored. ``"all"``: those four, then those of B05, B06, B07, B8A, B11, B12 the input holds.
        A list of band names (ids or common names) with a 20 m band among them or all four 10 m
        bands, e.g. ``["B04", "B08", "swir16"]``: those bands in that order, each found by the name
        given, then by its aliases. A mapping ``{"B11": "my_label", ...}``: those bands, found by the
        labels given. For inputs whose labels are not band names: a list of the input labels of B04,
        B03, B02, B08 in that order (e.g. ``[1, 2, 3, 4]``), or a mapping ``{"B04": label, "B03": ...,
        "B02": ..., "B08": ...}``.
        The 20 m bands are expected on the 10 m grid as odc-stac and ``xr_opensr.stac.load_s2`` deliver
        them by default (nearest neighbour: each 20 m pixel a 2 x 2 block of 10 m pixels, blocks on the
        Sentinel-2 20 m grid, i.e. at multiples of 20 m of the CRS): blocks that are not constant
        (shifted, resampled from another grid, bilinear) raise InputError when computed; a block cut
        by the image edge keeps its half inside. They need the four 10 m bands in the input (the
        guide). The 20 m model sees all six 20 m bands the input holds (asked for or not; a band
        missing from the input, or nodata at a pixel, is stood in for, as the model's input only, by
        the band nearest in wavelength present there).
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
    return_samples : also return the samples (variable ``samples``, extra leading dim ``sample``),
        made to agree with ``sr`` and ``uncertainty``. After the patches are blended, each pixel's
        samples are standardised over the sample dim, times ``uncertainty``, plus ``sr``
        (:func:`xr_opensr.models.pipeline.samples_with_moments`); where that would give a negative
        sample, the lowest samples are raised to one common value first (the order is kept). So, for
        ``samples`` = S >= 2, at every valid pixel, patch overlaps included, to float32 rounding:
        every sample is >= 0 (clipped like ``sr``), their mean is ``sr``, and their standard deviation
        (ddof=1) is ``min(uncertainty, sr * sqrt(S))``: ``uncertainty`` except where it exceeds
        ``sr * sqrt(S)``, the most that S values >= 0 with mean ``sr`` can spread (there the largest
        sample is ``S * sr`` and the others 0; where ``sr`` is 0, all are 0). S = 1: the one sample
        is ``sr``. The diffusion model gives the samples their detail; a diffusion-only model's raw
        spread is scaled by its ``std_scale``, as ``uncertainty`` is. With ``output_dtype="uint16"``
        each sample is encoded as the other variables (DN = the float32 value x 10000, within 1e-4),
        so these hold to that rounding. NaN where ``sr`` is NaN.
    output_dtype : None/"float32" (reflectance) or "uint16": DN = round(reflectance x 10000), nodata 0,
        CF ``scale_factor``/``_FillValue`` attrs (lossless to 1e-4; see ``xr_opensr._encode``).
    model20 : the 20 m-band model: ``"s2-20m"`` (shipped) or a model folder; used only when 20 m
        bands are asked for. Its uncertainty is its predicted standard deviation (``samples`` and
        ``steps`` concern the 10 m bands); ``return_samples`` is not available with 20 m bands.

    Returns
    -------
    Dataset with ``sr`` and ``uncertainty`` (and ``samples``): float32 reflectance on the 2.5 m
    grid (each 10 m pixel split into 4 x 4; HR centres at the LR centre +-1.25 m and +-3.75 m),
    dims in the input's order (a Dataset input gets a ``band`` dim before y/x), chunks of whole
    patch-grid tiles; CRS and transform written with rioxarray; attrs name the model, version,
    samples, steps, eta, seed, patch, overlap and units. ``uncertainty`` is the per-band standard
    deviation (a diffusion-only model: of its samples, times the model's ``std_scale``; 0 when
    ``samples == 1``); in patch overlaps ``sr`` and ``uncertainty`` are blended with the same smooth
    weights, and the samples then moved to them (``return_samples``).
    Lazy: computing ``sr`` and ``uncertainty`` together runs the model once per patch.

    Raises
    ------
    InputError, BandError, GridError, ModelError, CheckpointError, DeviceError
        Before anything is computed, naming the fix; when computed: InputError for implausible
        reflectance, ModelError for NaN/inf results of valid pixels.
    """
    # 1. options (cheap, first)
    samples = _count("samples", samples)
    steps = None if steps is None else _positive_int("steps", steps)
    eta = _eta(eta)
    seed = _seed(seed)
    batch_size = None if batch_size is None else _positive_int("batch_size", batch_size)
    threads = _positive_int("threads", threads)
    patch = None if patch is None else _positive_int("patch", patch)
    _check_options(overlap, histogram_matching=histogram_matching, return_samples=return_samples)
    output_dtype = _encode.check_output_dtype(output_dtype)

    # 2. input structure and grid (no model needed)
    obj, y_dim, x_dim, geobox = _inputs.grid(obj)

    # 3. model (eager, once: cached for the computing threads of this process)
    spec = _runtime.ModelSpec(
        model=_model_id(model), device=_device_id(device), dtype=_dtype_id(dtype), samples=samples,
        steps=steps, eta=eta, histogram_matching=bool(histogram_matching), return_samples=bool(return_samples),
        batch_size=batch_size, cpu_threads=threads,
    )
    cfg = _runtime.get_model(spec).config
    patch, overlap = _patch_grid(cfg, steps, patch, overlap)

    # 4. bands -> (*lead, band, y, x) raw dask array + per-band conversion -> graph
    inp = _inputs.model_input(obj, y_dim, x_dim, tuple(cfg.bands), bands)
    spec, out = _build_graph(inp, spec, cfg, model20, geobox, patch=patch, overlap=overlap, seed=seed)

    # 5. xarray wrapping: coords from the 4x finer GeoBox, input dim order, attrs
    ds = _wrap_result(out, inp, spec, cfg, geobox, y_dim, x_dim, obj.rio.crs, seed=seed, patch=patch, overlap=overlap)
    return _encode.encode(ds, output_dtype)


# --------------------------------------------------------------------------- options


def _count(name: str, value: Any) -> int:
    """A non-negative integer (``samples=0``: the fast deterministic path of a model with a mean network)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise InputError(f"{name} must be an integer >= 0 (0: the mean alone, without uncertainty), got {value!r}")
    return int(value)


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



def _eta(eta: Any) -> float | None:
    if eta is None:
        return None
    if isinstance(eta, bool) or not isinstance(eta, numbers.Real) or not (math.isfinite(eta) and eta >= 0):
        raise InputError(f"eta must be a real number >= 0 (0 = deterministic DDIM) or None, got {eta!r}")
    return float(eta)


def _seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise InputError(f"seed must be a non-negative integer, got {seed!r}; e.g. seed=0")
    return int(seed)


def _check_options(overlap: Any, **flags: Any) -> None:
    if overlap is not None and (isinstance(overlap, bool) or not isinstance(overlap, numbers.Integral) or overlap < 0):
        raise InputError(f"overlap must be an integer >= 0 (LR pixels), got {overlap!r}")
    for flag, value in flags.items():
        if not isinstance(value, bool | np.bool_):
            raise InputError(f"{flag} must be True or False, got {value!r}")


def _patch_grid(cfg: Any, steps: int | None, patch: int | None, overlap: int | None) -> tuple[int, int]:
    """(patch, overlap) in LR pixels, checked against the model's config (``steps`` too)."""
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
    return patch, overlap


def _guided_spec(spec: _runtime.ModelSpec, model20: Any, bands20: tuple[str, ...], geobox: Any, patch: int,
                 overlap: int) -> _runtime.ModelSpec:
    """``spec`` with the 20 m path (checked, its model loaded): the 20 m grid must tile the patch grid."""
    if spec.return_samples:
        raise InputError(
            f"return_samples=True with the 20 m bands {list(bands20)}: the 20 m model gives a mean and a "
            "standard deviation, not samples; use return_samples=False, or ask for 10 m bands only"
        )
    if patch % 2 or overlap % 2:
        raise InputError(
            f"patch={patch} and overlap={overlap} with 20 m bands: both must be even (10 m pixels), so that "
            "every patch starts on the 20 m grid; e.g. overlap=8"
        )
    spec = dataclasses.replace(spec, model20=_model20_id(model20), bands20=bands20,
                               phase20=_inputs.phase20(geobox))
    _runtime.get_guided(spec)  # eager: a missing or broken 20 m model fails here, not in a task
    return spec


def _model20_id(model20: Any) -> str:
    if not isinstance(model20, str | Path):
        raise InputError(f"model20 must be a name ('s2-20m') or a model folder, got {type(model20).__name__}")
    path = Path(model20).expanduser()
    return str(path.resolve()) if path.exists() else str(model20)


# --------------------------------------------------------------------------- graph


def _build_graph(inp: _inputs.ModelInput, spec: _runtime.ModelSpec, cfg: Any, model20: Any, geobox: Any, *,
                 patch: int, overlap: int, seed: int) -> tuple[_runtime.ModelSpec, da.Array]:
    """The lazy (*lead, K, C, H, W) output of the selected bands, and ``spec`` with the 20 m path
    when 20 m bands are among them."""
    sel = inp.selection
    bands20 = sel.bands20(tuple(cfg.bands))
    if bands20:
        spec = _guided_spec(spec, model20, bands20, geobox, patch, overlap)
    out = _graph.superresolve_array(
        inp.data, _inputs.kernel_for(spec), patch=patch, overlap=overlap, n_outputs=spec.n_outputs, seed=seed,
        scale=cfg.scale, lead_keys=inp.keys, band_scale=sel.scale, band_offset=sel.offset, band_nodata=sel.nodata,
        guide_channels=len(cfg.bands),
    )
    return spec, out


# --------------------------------------------------------------------------- output


def _wrap_result(out: da.Array, inp: _inputs.ModelInput, spec: _runtime.ModelSpec, cfg: Any, geobox: Any,
                 y_dim: Hashable, x_dim: Hashable, crs: Any, *, seed: int, patch: int, overlap: int) -> xr.Dataset:
    """The graph's output as :func:`superresolve`'s Dataset (before encoding): on the 4x finer GeoBox
    (``crs`` and its transform written), in the input's dim and band order, with the attrs that
    describe the run."""
    sel = inp.selection
    hr = _inputs.hr_geobox(geobox, cfg.scale)
    ds = _wrap(out, inp, hr, y_dim, x_dim, spec.samples if spec.return_samples else 0)
    if sel.picks != list(range(len(sel.labels))):
        ds = ds.isel({sel.band_dim: sel.picks})
    ds.attrs = {
        "title": "Sentinel-2 4x super-resolution (xr-opensr)",
        "model": cfg.name,
        "model_version": cfg.version,
        "samples": spec.samples,
        "steps": int(spec.steps if spec.steps is not None else cfg.sampler.steps),
        "eta": float(spec.eta if spec.eta is not None else cfg.sampler.eta),
        "seed": seed,
        "patch": patch,
        "overlap": overlap,
        "scale": cfg.scale,
        "std_scale": float(cfg.std_scale),
        "histogram_matching": int(spec.histogram_matching),
        "consistency": cfg.consistency.describe(),
        "units": "1 (surface reflectance)",
        "resolution_m": GRID_RESOLUTION_M / cfg.scale,
    }
    if spec.bands20:
        guided = _runtime.get_guided(spec).config
        ds.attrs.update(model20=guided.name, model20_version=guided.version)
    return ds.rio.write_crs(crs).rio.write_transform(hr.affine)


def _wrap(out: da.Array, inp: _inputs.ModelInput, hr: Any, y_dim: Hashable, x_dim: Hashable,
          samples: int) -> xr.Dataset:
    """The graph's (*lead, K, C, H, W) output as a Dataset (``sr``, ``uncertainty``, and ``samples``
    when ``samples`` > 0) on the HR GeoBox ``hr``, dims in the input's order."""
    sel, lead_dims = inp.selection, inp.lead_dims
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
            "long_name": "calibrated per-band standard deviation of sr (the samples' standard deviation)",
            **unit_attrs}),
    }
    if samples:
        smp = _samples(out, lead_nd, samples, f"opensr-samples-{token}")
        variables["samples"] = xr.Variable(("sample", *canon), smp, {
            "long_name": "super-resolved surface reflectance samples (mean sr, std min(uncertainty, "
                         "sr x sqrt(samples)), >= 0)", **unit_attrs})
        coords["sample"] = ("sample", np.arange(samples))
    ds = xr.Dataset(variables, coords=coords)
    return ds.transpose(*(["sample"] if samples else []), *sel.out_dims)


def _pick(block: np.ndarray, *, index: tuple) -> np.ndarray:
    return block[index]


def _plane(out: da.Array, k: int, lead_nd: int, name: str) -> da.Array:
    """(*lead, K, C, H, W) -> plane k (*lead, C, H, W), a lazy slice named ``opensr-...``."""
    index = (slice(None),) * lead_nd + (k,)
    return da.map_blocks(
        _pick, out, index=index, drop_axis=lead_nd, name=name, dtype=np.float32,
        meta=np.empty((0,) * (out.ndim - 1), dtype=np.float32),
    )


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
