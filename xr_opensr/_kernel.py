"""The patch kernel: numpy in, numpy out; the only place the dask graph touches the model.

``run_patches(spec, patches, seeds)`` takes N LR patches of reflectance, all of the model's patch
size, and returns for each the per-pixel mean and standard deviation over ``spec.samples``
diffusion samples (and the samples themselves with ``spec.return_samples``).

All (patch, sample) latents of the call go through the networks together, in calls of a fixed
batch size (``spec.batch_size`` or the model's choice for the device, the last call padded), so a
patch's result depends on its data and seed only: not on its batch mates, its position in the
batch or the number of patches in the block (see :meth:`SRModel.sample_summary`). Memory does not
grow with ``samples``: the samples are reduced to running sums as they are drawn.
"""

from __future__ import annotations

import threading

import numpy as np

from ._runtime import ModelSpec, get_model, model_lock, torch_threads

__all__ = ["run_patches", "kernel_stats", "reset_kernel_stats"]

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
    """
    patches = np.asarray(patches, dtype=np.float32)
    seeds = np.asarray(seeds)
    if seeds.shape != (patches.shape[0],):
        raise ValueError(f"need one seed per patch: patches {patches.shape}, seeds {seeds.shape}")
    net = get_model(spec)
    threads = spec.cpu_threads if net.device.type == "cpu" else None
    with model_lock(net), torch_threads(threads):
        out = net.sample_summary(
            patches,
            samples=spec.samples,
            steps=spec.steps,
            eta=spec.eta,
            seed=[int(v) for v in seeds],
            histogram_matching=spec.histogram_matching,
            batch_size=spec.batch_size,
            return_samples=spec.return_samples,
        )
    with _STATS_LOCK:
        _STATS["calls"] += 1
        _STATS["patches"] += patches.shape[0]
    return out
