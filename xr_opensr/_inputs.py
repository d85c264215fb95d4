"""Input preparation for :func:`xr_opensr.superresolve`: everything before the dask graph.

* the bands: the model bands picked out of a DataArray or a Dataset of band variables, as one raw
  dask array, with the per-band DN -> reflectance rule of :mod:`xr_opensr.sentinel2`;
* the seed keys of the leading elements (time stamps ...);
* the value checks that run inside the graph's tasks, around the kernel.

The grid and its GeoBox are :mod:`xr_opensr.geometry`'s. Only xarray, dask.array and numpy here; the
model is touched through ``_runtime``/``_kernel`` in the checked kernel, which runs when the graph is
computed.
"""

from __future__ import annotations

import functools
import hashlib
import numbers
import warnings
from collections.abc import Hashable, Mapping, Sequence
from typing import Any, NamedTuple

import dask.array as da
import numpy as np
import xarray as xr

from . import _graph, _kernel, _runtime
from .errors import BandError, InputError, ModelError, OpenSRWarning
from .sentinel2 import (
    BAND_ALIASES,
    BAND_DIM_NAMES,
    GUIDED_BANDS,
    SR_BANDS,
    ReflectanceRule,
    canonical_band,
    reflectance_rule,
)

#: plausible surface reflectance after scaling: slightly negative over dark targets (noise, the L2A
#: offset), above 1 over bright clouds and snow; values outside are wrong scaling or fill values
REFLECTANCE_RANGE = (-0.1, 2.0)


# --------------------------------------------------------------------------- entry points


class ModelInput(NamedTuple):
    """The model bands as the graph reads them."""

    selection: Selection  # labels, coords, output dims and per-band conversion
    lead_dims: list[Hashable]  # dims of the output before (band, y, x), e.g. ["time"]
    data: da.Array  # (*lead, *whole, band, y, x) raw values
    keys: np.ndarray  # (*lead) uint64 seed keys
    whole_dims: tuple[Hashable, ...] = ()  # the model's core dims before (band, y, x): kept whole, not in the output


def model_input(obj: xr.DataArray | xr.Dataset, y_dim: Hashable, x_dim: Hashable,
                model_bands: tuple[str, ...], bands: Any, whole: tuple[Hashable, ...] = ()) -> ModelInput:
    """The model bands of ``obj`` (see ``superresolve(bands=...)``) as a (*lead, *whole, band, y, x) dask
    array; ``whole``: the model's core dims before (band, y, x) (e.g. ``("time",)``), which the input
    must have and the output loses."""
    sel = select_bands(obj, y_dim, x_dim, model_bands, bands)
    missing = [d for d in whole if d not in sel.dims]
    if missing:
        raise InputError(f"the model consumes the dims {list(whole)}, but the input has no {missing} (dims "
                         f"{tuple(sel.dims)}); give it a cube with those dims (e.g. a time series: "
                         "obj.expand_dims(time=[...]) for one date), or choose a single-date model")
    lead_dims = [d for d in sel.dims if d not in (sel.band_dim, y_dim, x_dim, *whole)]
    order = [sel.dims.index(d) for d in (*lead_dims, *whole, sel.band_dim, y_dim, x_dim)]
    data = sel.data.transpose(order)
    keys = lead_keys(obj, lead_dims, [data.shape[i] for i in range(len(lead_dims))])
    if whole:
        sel.out_dims = [d for d in sel.out_dims if d not in whole]
        sel.coords = {k: v for k, v in sel.coords.items() if not set(v.dims) & set(whole)}
    return ModelInput(sel, lead_dims, data, keys, tuple(whole))


def native20_bands(obj: xr.DataArray | xr.Dataset) -> list[str]:
    """The native 20 m bands of :data:`GUIDED_BANDS` that ``obj`` holds, by name (Dataset variables,
    or the string labels of a dim, also inside a Dataset's variables), in that order."""
    arrays = list(obj.data_vars.values()) if isinstance(obj, xr.Dataset) else [obj]
    labels: list[Any] = list(obj.data_vars) if isinstance(obj, xr.Dataset) else []
    for arr in arrays:
        for dim in arr.dims:
            if dim in arr.coords and arr[dim].dtype.kind in "OUS" or str(dim).lower() in BAND_DIM_NAMES:
                labels += _dim_labels(arr, dim)
    found = {canonical_band(label) for label in labels}
    return [b for b in GUIDED_BANDS if b in found]


# --------------------------------------------------------------------------- bands


class Selection:
    """The bands picked out of the input: raw data (any dims order, incl. ``band_dim``), one channel per band.

    ``names`` are the channels' band ids (the model bands first, then the 20 m bands in the 20 m
    model's order), ``labels`` their input labels, ``picks`` the channels returned, in the order asked.
    """

    def __init__(self, data: da.Array, dims: list[Hashable], band_dim: Hashable, labels: list,
                 coords: Mapping, out_dims: list[Hashable], scale, offset, nodata,
                 names: Sequence[str] = (), picks: Sequence[int] | None = None) -> None:
        self.data, self.dims, self.band_dim, self.labels = data, dims, band_dim, labels
        self.coords, self.out_dims = coords, out_dims
        self.scale, self.offset, self.nodata = scale, offset, nodata
        self.names = list(names)
        self.picks = list(range(len(labels))) if picks is None else list(picks)

    def bands20(self, model_bands: Sequence[str]) -> tuple[str, ...]:
        """The channels past the model bands: the native 20 m bands (empty for the 10 m path)."""
        return tuple(self.names[len(model_bands):])


class BandRequest(NamedTuple):
    """What ``superresolve(bands=...)`` asks for, before looking at the input.

    ``wanted``: the channels the input must hold, as (band id, accepted labels in priority order); the
    model bands first. ``optional``: further 20 m bands taken when the input holds them (the 20 m model
    sees all six; a band's result does not depend on which others were asked for). ``requested``: the
    band ids returned, in order.
    """

    wanted: list[tuple[str, list[str]]]
    optional: list[tuple[str, list[str]]]
    requested: list[str]
    guided: bool = False  # a native 20 m band is asked for: the 20 m path runs
    everything: bool = False  # bands="all": the requested bands the input holds


def _norm(label: Any) -> str:
    return str(label).strip().lower()


def _aliases(band: str) -> list[str]:
    return [_norm(a) for a in BAND_ALIASES.get(band.upper(), (band,))]


def _wanted(model_bands: tuple[str, ...], bands: Any) -> list[tuple[str, list[str]]]:
    """[(model band, accepted normalised labels in priority order)]: the four-band forms of ``bands``."""
    if bands is None:
        return [(b, _aliases(b)) for b in model_bands]
    if isinstance(bands, Mapping):
        unknown = sorted(set(map(str, bands)) - set(model_bands))
        missing = [b for b in model_bands if b not in bands]
        if unknown or missing:
            raise BandError(f"bands mapping must have exactly the model bands {list(model_bands)} as keys; "
                            f"unknown {unknown}, missing {missing}")
        return [(b, [_norm(bands[b])]) for b in model_bands]
    if isinstance(bands, str) or not isinstance(bands, Sequence) or len(bands) != len(model_bands):
        raise BandError(f"bands must list {len(model_bands)} input labels for the model bands {list(model_bands)} in "
                        f"that order (e.g. bands=['red', 'green', 'blue', 'nir']) or map them, got {bands!r}; or name "
                        f"the bands to super-resolve (e.g. bands=['B04', 'B11']), or bands='all' for {list(SR_BANDS)}")
    return [(b, [_norm(v)]) for b, v in zip(model_bands, bands)]


def band_request(bands: Any, model_bands: tuple[str, ...], guided_bands: tuple[str, ...] = GUIDED_BANDS
                 ) -> BandRequest:
    """Parse ``superresolve(bands=...)``.

    * None: the model bands (found by name).
    * ``"all"``: the model bands, then those of ``guided_bands`` the input holds.
    * a sequence of band names (``"B11"``, ``"swir16"``, ...: every item a distinct band of
      :data:`SR_BANDS`, with a 20 m band among them or all four model bands): those bands, in that
      order, each found by the label given, then its aliases (the 10 m model makes the four at once).
    * a mapping ``{band: input label}`` with such bands as keys: those bands, found by the labels.
    * otherwise (the four-band forms): a sequence of four input labels for the model bands in their
      order (e.g. integer band numbers), or a mapping with exactly the model bands as keys.
    """
    sr_bands = (*model_bands, *guided_bands)
    if bands is None:
        return BandRequest(_wanted(model_bands, None), [], list(model_bands))
    labels: dict[str, list[str]] = {}
    if isinstance(bands, str):
        if _norm(bands) != "all":
            raise BandError(f"bands={bands!r} is not understood: give 'all' (the bands {list(sr_bands)}), a list of "
                            "band names (e.g. bands=['B04', 'B11']) or None (the 10 m bands)")
        optional = [(b, _aliases(b)) for b in guided_bands]
        return BandRequest(_wanted(model_bands, None), optional, list(sr_bands), True, True)
    elif isinstance(bands, Mapping):
        canon = [canonical_band(k) for k in bands]
        if set(map(str, bands)) <= set(model_bands) or not all(c in sr_bands for c in canon):
            return BandRequest(_wanted(model_bands, bands), [], list(model_bands))
        requested = [str(c) for c in canon]
        labels = {str(c): [_norm(v)] for c, v in zip(canon, bands.values())}
    else:
        canon = [canonical_band(v) for v in bands] if isinstance(bands, Sequence) else [None]
        if not all(c in sr_bands for c in canon) or not (set(canon) & set(guided_bands) or
                                                          sorted(map(str, canon)) == sorted(model_bands)):
            return BandRequest(_wanted(model_bands, bands), [], list(model_bands))
        requested = [str(c) for c in canon]
        labels = {str(c): [_norm(v), *_aliases(str(c))] for c, v in zip(canon, bands)}
    if len(set(requested)) != len(requested):
        raise BandError(f"bands={bands!r} names a band twice; name each band once")
    wanted20 = [b for b in guided_bands if b in requested]
    if not wanted20:  # the 10 m path: the model bands, the requested ones by the labels given
        return BandRequest([(b, labels.get(b, _aliases(b))) for b in model_bands], [], requested)
    wanted = [(b, labels.get(b, _aliases(b))) for b in (*model_bands, *wanted20)]
    optional = [(b, _aliases(b)) for b in guided_bands if b not in requested]
    return BandRequest(wanted, optional, requested, True)


def _match(labels: Sequence[Any], wanted: list[tuple[str, list[str]]]) -> tuple[list[int], list[str]]:
    """Indices of the wanted bands in ``labels`` and the model bands not found."""
    normed = [_norm(v) for v in labels]
    found, missing = [], []
    for band, accepted in wanted:
        hits = [i for i, v in enumerate(normed) if v in accepted]
        if len(hits) > 1:
            raise BandError(f"band {band} has {len(hits)} labels in {[_plain(v) for v in labels]} "
                            f"({', '.join(repr(_plain(labels[i])) for i in hits)} at positions {hits}): which one is "
                            f"{band} cannot be told, and a mislabelled band would be super-resolved as another; give "
                            "each band one distinct label, e.g. obj.assign_coords(band=['B04', 'B03', ...]) or "
                            "ds.rename({...})")
        hit = next((normed.index(a) for a in accepted if a in normed), None)
        if hit is None:
            missing.append(band)
        else:
            found.append(hit)
    return found, missing


def _plain(label: Any) -> Any:
    """A numpy scalar label as the Python value it holds (for messages)."""
    return label.item() if isinstance(label, np.generic) else label


def _describe(missing: list[str], bands: Any) -> str:
    if bands is not None:
        return ", ".join(missing)
    return ", ".join(f"{b} ({'/'.join(BAND_ALIASES.get(b, (b,))[1:])})" for b in missing)


def _check_guides(missing: list[str], request: BandRequest, model_bands: tuple[str, ...], labels: Sequence[Any],
                  where: str) -> None:
    """The 20 m bands need every model band as a guide: a BandError naming the missing ones and the fix."""
    guides = [b for b in missing if b in model_bands]
    held = {b for b, accepted in request.optional if _match(labels, [(b, accepted)])[0]}
    asked = [b for b in request.requested if b not in model_bands and (not request.everything or b in held)]
    if not guides or not request.guided or not asked:
        return
    raise BandError(f"the 20 m bands {', '.join(asked)} are super-resolved guided by the four 10 m bands "
                    f"{', '.join(model_bands)}, but {where} lacks {_describe(guides, None)}; add them to the input "
                    f"(e.g. xr_opensr.stac.load_s2(..., bands='all')), or ask for 10 m bands only")


def _check_real(dtype: np.dtype, what: str) -> None:
    if np.dtype(dtype).kind not in "iuf":
        raise InputError(f"{what} has dtype {np.dtype(dtype)}; expected real numbers (float reflectance or integer "
                         "DN): convert first, e.g. obj.astype('float32') (complex data: take obj.real or abs(obj))")


def _as_dask(data: Any, dims: Sequence[Hashable], whole: Sequence[Hashable]) -> da.Array:
    """Dask view of the data; numpy data get chunks of one leading element and whole ``whole`` dims
    (band), spatial chunks of ``TARGET_BLOCK_LR`` pixels (the graph re-chunks to whole tiles)."""
    if isinstance(data, da.Array):
        return data
    chunks = tuple(-1 if d in whole else 1 for d in dims[:-2]) + (_graph.TARGET_BLOCK_LR,) * 2
    return da.from_array(np.asarray(data), chunks=chunks)


def _channels(labels: Sequence[Any], request: BandRequest, found: list[int]) -> tuple[list[int], list[str], list[int]]:
    """(indices in ``labels`` of the channels, their band ids, the returned channels in order).

    The channels: the wanted bands (at ``found``) and the optional ones ``labels`` holds; the model
    bands first, then the 20 m bands in the 20 m model's order."""
    have = {band: i for (band, _), i in zip(request.wanted, found)}
    for band, accepted in request.optional:
        hit, _ = _match(labels, [(band, accepted)])
        if hit:
            have[band] = hit[0]
    order = [b for b, _ in request.wanted if b not in GUIDED_BANDS] + [b for b in GUIDED_BANDS if b in have]
    return [have[b] for b in order], order, [order.index(b) for b in request.requested if b in have]


def select_bands(obj, y_dim, x_dim, model_bands: tuple[str, ...], bands: Any) -> Selection:
    request = band_request(bands, model_bands)
    wanted = request.wanted
    if isinstance(obj, xr.Dataset):
        spatial = [k for k, v in obj.data_vars.items() if y_dim in v.dims and x_dim in v.dims]
        if len(spatial) != 1 or obj[spatial[0]].ndim < 3:
            return _select_from_dataset(obj, y_dim, x_dim, model_bands, request, bands)
        obj = obj[spatial[0]]  # one cube variable with a band dim (e.g. a DataArray saved to Zarr)
    others = [d for d in obj.dims if d not in (y_dim, x_dim)]
    candidates = [(d, labels, *_match(labels, wanted)) for d in others for labels in [_dim_labels(obj, d)]]
    full = [c for c in candidates if not c[3]]
    if not full:
        named = [c for c in candidates if str(c[0]).lower() in BAND_DIM_NAMES]
        if not named:
            raise BandError(f"no band dimension in dims {tuple(obj.dims)}: expected a dim such as 'band' whose labels "
                            f"name the bands {list(model_bands)}; e.g. ds.to_dataarray('band') for a Dataset, or "
                            "obj.expand_dims(band=[...])")
        d, labels, _, missing = named[0]
        _check_guides(missing, request, model_bands, labels, f"dim {d!r} with labels {list(labels)}")
        raise BandError(f"missing bands {_describe(missing, bands)} in dim {d!r} with labels {list(labels)}; "
                        f"pass bands=[...] naming the input labels of {list(model_bands)} in that order, "
                        f"or label the dim: obj.assign_coords({d}=[...])")
    band_dim, labels, found, _ = full[0]
    picks, names, out = _channels(labels, request, found)
    _check_real(obj.dtype, f"DataArray {obj.name!r}" if obj.name is not None else "the DataArray")
    spatial_last = obj.transpose(..., y_dim, x_dim).dims
    data = _as_dask(obj.transpose(*spatial_last).data, spatial_last, (band_dim,))
    data = data.transpose([spatial_last.index(d) for d in obj.dims])
    axis = obj.dims.index(band_dim)
    data = data[(slice(None),) * axis + (list(picks),)]
    rule = reflectance_rule(obj, band_dim, picks)
    coords = {k: v for k, v in obj.coords.items()}
    return Selection(
        data, list(obj.dims), band_dim, [labels[i] for i in picks], coords, list(obj.dims),
        rule.scale, rule.offset, rule.nodata, names, out,
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


def _select_from_dataset(ds, y_dim, x_dim, model_bands, request: BandRequest, bands) -> Selection:
    names = [k for k, v in ds.data_vars.items() if y_dim in v.dims and x_dim in v.dims]
    found, missing = _match(names, request.wanted)
    if missing:
        _check_guides(missing, request, model_bands, names, f"the Dataset (variables {names})")
        raise BandError(f"missing bands {_describe(missing, bands)} among the Dataset variables {names}; "
                        f"pass bands=[...] naming the variables of {list(model_bands)} in that order, "
                        "or rename them, e.g. ds.rename({'b4': 'red'})")
    picks, band_ids, out = _channels(names, request, found)
    chosen = [ds[names[i]] for i in picks]
    dims = list(chosen[0].dims)
    for var in chosen:
        _check_real(var.dtype, f"variable {var.name!r}")
        if set(var.dims) != set(dims):
            raise InputError(f"band variables have different dims ({var.name!r}: {var.dims}, {chosen[0].name!r}: "
                             f"{tuple(dims)}); align them first, e.g. ds[...].broadcast_like(...)")
    spatial_last = list(chosen[0].transpose(..., y_dim, x_dim).dims)
    back = [spatial_last.index(d) for d in dims]
    arrays = [_as_dask(v.transpose(*spatial_last).data, spatial_last, ()).transpose(back) for v in chosen]
    dtype = np.result_type(*[v.dtype for v in chosen])
    axis = dims.index(y_dim)
    data = da.stack([a.astype(dtype) for a in arrays], axis=axis)
    all_dims = [*dims[:axis], "band", *dims[axis:]]
    rule = ReflectanceRule.stack([reflectance_rule(var) for var in chosen])
    return Selection(
        data, all_dims, "band", [names[i] for i in picks], dict(ds.coords), all_dims,
        rule.scale, rule.offset, rule.nodata, band_ids, out,
    )


# --------------------------------------------------------------------------- seeds


def _normalise(value: Any) -> str:
    if isinstance(value, np.datetime64):
        return "t" + str(int(value.astype("datetime64[ns]").astype(np.int64)))
    if isinstance(value, float | np.floating):
        return "f" + float(value).hex()
    if isinstance(value, numbers.Integral | np.integer):
        return "i" + str(int(value))
    return "s" + str(value)


def lead_keys(obj, lead_dims: list[Hashable], shape: list[int]) -> np.ndarray:
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


# --------------------------------------------------------------------------- value checks (in the tasks)


def kernel_for(spec: _runtime.ModelSpec):
    """The kernel the graph runs: :func:`_kernel.run_patches` for ``spec`` between the value checks."""
    return functools.partial(_checked_kernel, spec)


def _checked_kernel(spec: _runtime.ModelSpec, patches: np.ndarray, seeds: np.ndarray,
                    context: np.ndarray | None = None) -> np.ndarray:
    """:func:`_kernel.run_patches` between the value checks of its input and its output.

    Runs inside the graph's tasks (the data are only known there): an implausible input raises
    InputError, NaN/inf results for valid pixels raise ModelError, all-zero bands warn.
    """
    _check_reflectance(spec, patches)
    out = _kernel.run_patches(spec, patches, seeds, context)
    _check_result(spec, patches, out)
    return out


def _check_reflectance(spec: _runtime.ModelSpec, patches: np.ndarray) -> None:
    """(N, *W, C, P, P) reflectance (NaN = nodata) must lie in :data:`REFLECTANCE_RANGE`."""
    lo, hi = REFLECTANCE_RANGE
    per_band = np.moveaxis(patches, -3, 0).reshape(patches.shape[-3], -1)
    low = np.fmin.reduce(per_band, axis=1)  # per band, NaN ignored
    high = np.fmax.reduce(per_band, axis=1)
    if not (np.nanmin(low, initial=lo) < lo or np.nanmax(high, initial=hi) > hi):
        return
    bands = _runtime.get_model(spec).info.bands
    ranges = ", ".join(f"{b} {a:.4g} to {z:.4g}" for b, a, z in zip(bands, low, high) if a < lo or z > hi)
    outside = int(np.count_nonzero((patches < lo) | (patches > hi)))
    if 100 < np.nanmax(high) <= 70_000 and np.nanmin(low) >= lo:
        fix = ("the values are DN (reflectance x 10000) in a float array: declare the scaling, "
               "obj.attrs['scale_factor'] = 1e-4, or convert, obj / 10000")
    else:
        fix = ("an undeclared fill value (declare it: obj.rio.write_nodata(value)), saturated pixels (mask them, "
               "e.g. with the SCL band: xr_opensr.stac.load_s2(..., mask_clouds=True)) or a wrong offset; "
               f"mask such pixels first, e.g. obj.where((refl >= {lo:g}) & (refl <= {hi:g}))")
    raise InputError(f"implausible surface reflectance after scaling: {outside} values outside [{lo:g}, {hi:g}] "
                     f"({ranges}); likely {fix}")


def _check_result(spec: _runtime.ModelSpec, patches: np.ndarray, out: np.ndarray) -> None:
    """NaN/inf in the mean or std of a valid pixel is a ModelError (the std only when computed:
    ``samples=0`` leaves it NaN); an all-zero band warns."""
    model, ref = _runtime.get_model(spec), spec.ref
    valid = _kernel.valid_mask(model, patches)  # (N, C, P, P): the model's nodata rule, per band
    s = out.shape[-1] // patches.shape[-1]
    hr_valid = valid.repeat(s, axis=2).repeat(s, axis=3)[:, None]  # (N, 1, C, sP, sP)
    broken = hr_valid & ~np.isfinite(out[:, : 2 if spec.options.samples else 1])
    if broken.any():
        fix = ("use dtype=None (float32)" if ref.dtype not in (None, "float32")
               else "its weights make the networks overflow: re-export or retrain the model")
        n10 = len(model.info.bands) - len(spec.bands20)
        culprit = ref.model20 if spec.bands20 and not broken[:, :, :n10].any() else ref.model
        raise ModelError(f"model {culprit!r} returned NaN or infinite values for {int(broken.sum())} values of valid "
                         f"pixels (device {ref.device!r}, dtype {ref.dtype or 'float32'}); {fix}")
    weight = hr_valid[:, 0]  # (N, C, sP, sP)
    mean = np.where(weight, out[:, 0], 0.0)  # (N, C, sP, sP)
    zero = weight.any(axis=(-2, -1)) & ~mean.any(axis=(-2, -1))  # (N, C): valid pixels, all 0
    nonzero = np.nan_to_num(patches) != 0
    nonzero = nonzero.reshape((nonzero.shape[0], -1, *nonzero.shape[-3:])).any(axis=1)  # (N, C, P, P)
    hidden = zero & (valid & nonzero).any(axis=(-2, -1))  # ... though their input was not all 0
    if hidden.any():
        warnings.warn(
            f"super-resolved reflectance is 0 everywhere in {int(hidden.sum())} band(s) of patches whose input "
            "reflectance is <= 0 there: results are clipped at 0 (reflectance is not negative). If the "
            "input should not be negative, check its offset (Sentinel-2 L2A from processing baseline "
            "04.00: reflectance = (DN - 1000) / 10000, which xr_opensr.stac.load_s2 applies)",
            OpenSRWarning,
            stacklevel=2,
        )

