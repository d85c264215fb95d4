"""The patch kernel: numpy in, numpy out; the only place the dask graph touches the model.

``run_patches(spec, patches, seeds)`` takes N LR patches of reflectance, all of the model's patch
size, and returns for each the per-pixel mean and standard deviation over ``spec.samples``
diffusion samples (and the samples themselves with ``spec.return_samples``).

All (patch, sample) latents of the call go through the networks together, in calls of a fixed
batch size (``spec.batch_size`` or the model's choice for the device, the last call padded), so a
patch's result depends on its data and seed only: not on its batch mates, its position in the
batch or the number of patches in the block (see :meth:`SRModel.sample_summary`). Memory does not
grow with ``samples``: the samples are reduced to running sums as they are drawn.

With ``spec.bands20`` the patches hold native 20 m bands after the model bands, on the 10 m grid
(each 20 m pixel a 2 x 2 block of equal 10 m pixels, as odc-stac's nearest-neighbour resampling
delivers them). After the 10 m path, the 20 m path takes each block's mean as the native 20 m value
and runs the 20 m model (:class:`~xr_opensr.models.guided.GuidedSR`) with the native 10 m bands and
their super-resolution as the guide; its uncertainty is the model's standard deviation.
"""

from __future__ import annotations

import threading
import warnings

import numpy as np

from ._runtime import ModelSpec, get_guided, get_model, model_lock, torch_threads
from .errors import InputError
from .sentinel2 import BANDS

__all__ = ["run_patches", "kernel_stats", "reset_kernel_stats", "valid_mask", "check_native_blocks"]

_STATS = {"calls": 0, "patches": 0}
_STATS_LOCK = threading.Lock()


def kernel_stats() -> dict[str, int]:
    """Kernel calls and patches processed in this process since the last reset (tests, diagnostics)."""
    with _STATS_LOCK:
        return dict(_STATS)


def reset_kernel_stats() -> None:
    """Set this process's kernel counters to zero."""
    with _STATS_LOCK:
        _STATS.update(calls=0, patches=0)


def run_patches(spec: ModelSpec, patches: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """Super-resolve a stack of LR patches.

    Parameters
    ----------
    spec : the model and sampling settings (loaded once per process, see :mod:`xr_opensr._runtime`).
    patches : (N, C, P, P) float32 reflectance in the model's band order; NaN = nodata.
    seeds : (N,) non-negative integers, the noise seed of each patch (its result depends only on
        its own seed, not on its batch mates).

    Returns
    -------
    (N, K, C, s*P, s*P) float32 with s = ``model.config.scale``: plane 0 the mean over samples,
    plane 1 the per-band sample standard deviation times ``config.std_scale`` (0 when samples == 1),
    planes 2.. the samples when ``spec.return_samples`` (K = 2 + samples), else K = 2.
    NaN in the s x s HR pixels of every nodata LR pixel.

    With ``spec.bands20``: C = model bands + 20 m bands (:func:`guided_path`); the kernel returns
    K = 2 (mean, std). Nodata is per band: a 10 m pixel that is nodata in any model band is NaN in
    every band (the model bands are the 20 m bands' guide); a 20 m band's nodata is NaN in that band
    only (:func:`valid_mask`).
    """
    patches = np.asarray(patches, dtype=np.float32)
    seeds = np.asarray(seeds)
    if seeds.shape != (patches.shape[0],):
        raise ValueError(f"need one seed per patch: patches {patches.shape}, seeds {seeds.shape}")
    net = get_model(spec)
    threads = spec.cpu_threads if net.device.type == "cpu" else None
    n10 = len(net.config.bands)
    with model_lock(net), torch_threads(threads):
        out = net.sample_summary(
            patches[:, :n10] if spec.bands20 else patches,
            samples=spec.samples,
            steps=spec.steps,
            eta=spec.eta,
            seed=[int(v) for v in seeds],
            histogram_matching=spec.histogram_matching,
            batch_size=spec.batch_size,
            return_samples=spec.return_samples,
        )
        if spec.bands20:
            out20 = guided_path(spec, patches, out[:, 0], out[:, 1])
            out = np.concatenate([out[:, :2], out20], axis=2)
    with _STATS_LOCK:
        _STATS["calls"] += 1
        _STATS["patches"] += patches.shape[0]
    return out


def guided_path(spec: ModelSpec, patches: np.ndarray, mean10: np.ndarray, std10: np.ndarray) -> np.ndarray:
    """The 20 m bands of the patches super-resolved by the 20 m model.

    Parameters
    ----------
    spec : ``spec.bands20`` names the channels after the model bands, ``spec.phase20`` the (row,
        column) within the 20 m grid of the patches' first pixel.
    patches : (N, C, P, P) float32 reflectance: the model bands, then the 20 m bands on the 10 m grid.
    mean10, std10 : (N, c10, sP, sP) the 10 m path's mean and standard deviation.

    Returns
    -------
    (N, 2, len(bands20), sP, sP) float32: mean (clipped at 0, as the 10 m path) and standard deviation.

    A 20 m pixel cut by the patch edge (phase 1) is completed by one row/column of edge padding of
    every input (its value is known from its half inside), and the output cropped back. A 20 m pixel
    cut by the image edge keeps the half inside (the graph pads 20 m channels with NaN). Nodata is per
    band: a 20 m band missing at a pixel (or lacking from the input) is stood in for, as the model's
    input only, by the 20 m band nearest in wavelength that is present there; the band's output is
    NaN where its own input is nodata. The 2 x 2 blocks of a 20 m band must be constant (nearest
    resampling on the 20 m grid): :func:`check_native_blocks`.
    """
    guided = get_guided(spec)
    n10 = mean10.shape[1]
    size = patches.shape[-1]
    s = mean10.shape[-1] // size
    py, px = spec.phase20
    pad = ((0, 0), (0, 0), (py, (size + py) % 2), (px, (size + px) % 2))
    lr10, fine20 = patches[:, :n10], patches[:, n10:]
    check_native_blocks(fine20, spec.bands20, spec.phase20)
    if any(p for axis in pad for p in axis):
        lr10, fine20 = np.pad(lr10, pad, mode="edge"), np.pad(fine20, pad, mode="edge")
        hr_pad = tuple((s * a, s * b) for a, b in pad)
        mean10, std10 = np.pad(mean10, hr_pad, mode="edge"), np.pad(std10, hr_pad, mode="edge")
    n, k, h, w = fine20.shape
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN blocks stay NaN
        native = np.nanmean(fine20.reshape(n, k, h // 2, 2, w // 2, 2), axis=(3, 5)).astype(np.float32)
    target = _stand_in_values(native, spec.bands20, guided.bands)
    # the fast path has no 10 m uncertainty to propagate: the 20 m std is not computed (NaN)
    mean, std = guided.superresolve(lr10, target, mean10, std10 if spec.samples else None)
    index = [guided.bands.index(b) for b in spec.bands20]
    crop = (slice(None), index, slice(s * py, s * (py + size)), slice(s * px, s * (px + size)))
    mean = np.maximum(mean[crop], np.float32(0.0))  # reflectance is not negative (as the 10 m path; NaN stays)
    out = np.stack([mean, std[crop]], axis=1).astype(np.float32)
    own = np.isnan(patches[:, n10:]).repeat(s, axis=-2).repeat(s, axis=-1)  # (N, k, sP, sP): the band's nodata
    np.copyto(out, np.float32(np.nan), where=own[:, None])
    return out


def valid_mask(patches: np.ndarray, n_guide: int) -> np.ndarray:
    """(N, C, P, P) bool: where each channel's result is defined (the kernel's nodata rule): the model
    bands (the first ``n_guide``) all valid, and, for a 20 m channel, that channel valid too."""
    guide = np.isfinite(patches[:, :n_guide]).all(axis=1, keepdims=True)
    return guide & (np.isfinite(patches) | (np.arange(patches.shape[1]) < n_guide)[None, :, None, None])


#: largest spread of a 2 x 2 block of a 20 m band on the 10 m grid (reflectance) still taken as
#: one native 20 m pixel: float rounding of DN scaling, far below one DN (1e-4)
BLOCK_TOLERANCE = 2e-5


def check_native_blocks(fine20: np.ndarray, bands20: tuple[str, ...], phase20: tuple[int, int]) -> None:
    """The 20 m channels (N, k, P, P) must hold each native 20 m pixel as a constant 2 x 2 block on
    the Sentinel-2 20 m grid (phase ``phase20``); NaN is ignored (nodata, or past the image edge).
    Blocks that are not constant mean the bands were shifted, resampled across the grid (another
    UTM zone, bilinear or cubic resampling) or are not Sentinel-2 20 m data: their native values
    cannot be read, so InputError instead of a silently wrong result."""
    py, px = phase20
    n, k, h, w = fine20.shape
    core = fine20[:, :, py: py + (h - py) // 2 * 2, px: px + (w - px) // 2 * 2]
    blocks = core.reshape(n, k, core.shape[-2] // 2, 2, core.shape[-1] // 2, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN blocks
        spread = np.nanmax(blocks, axis=(3, 5)) - np.nanmin(blocks, axis=(3, 5))  # (n, k, h/2, w/2)
    bad = spread > BLOCK_TOLERANCE
    if not bad.any():
        return
    per_band = bad.sum(axis=(0, 2, 3))
    worst = ", ".join(f"{b}: {int(c)} of {bad[:, i].size} blocks, up to {np.nanmax(spread[:, i]):.3g}"
                      for i, (b, c) in enumerate(zip(bands20, per_band)) if c)
    raise InputError(
        "the 20 m bands are not on the Sentinel-2 20 m grid: their 2 x 2 blocks of 10 m pixels (edges at "
        f"multiples of 20 m of the CRS) are not constant ({worst}), so the native 20 m values cannot be read "
        "(shifted by 10 m, resampled from another grid or UTM zone, or with bilinear/cubic resampling). Load "
        "them on the 20 m grid with nearest resampling, e.g. xr_opensr.stac.load_s2(..., bands='all') or "
        "odc.stac.load(..., resolution=10, resampling='nearest'), or ask for the 10 m bands only"
    )


def _stand_in_values(native: np.ndarray, present: tuple[str, ...], order: tuple[str, ...]) -> np.ndarray:
    """(N, len(order), h, w): each band of ``order`` from ``native`` (N, len(present), h, w); where a
    band is absent or nodata, the value of the present band nearest in central wavelength that is
    valid at that pixel (NaN where no 20 m band is)."""
    out = np.empty((native.shape[0], len(order), *native.shape[2:]), dtype=np.float32)
    for c, band in enumerate(order):
        ranked = sorted(range(len(present)), key=lambda i: (present[i] != band,
                                                             abs(BANDS[present[i]].wavelength_nm
                                                                 - BANDS[band].wavelength_nm)))
        value = native[:, ranked[0]].copy()
        for i in ranked[1:]:
            hole = np.isnan(value)
            if not hole.any():
                break
            value[hole] = native[:, i][hole]
        out[:, c] = value
    return out
