"""The patch kernel: numpy in, numpy out; the only place the dask graph touches the model.

``run_patches(spec, patches, seeds)`` takes N LR patches of reflectance, all of the model's patch
size, and returns for each the per-pixel mean and standard deviation over ``spec.samples``
diffusion samples (and the samples themselves with ``spec.return_samples``).
"""

from __future__ import annotations

import threading

import numpy as np

from ._runtime import ModelSpec, get_model, model_lock, torch_threads

__all__ = ["run_patches", "kernel_stats", "reset_kernel_stats", "default_batch_size"]

_STATS = {"calls": 0, "patches": 0}
_STATS_LOCK = threading.Lock()

#: memory for one ``SRModel.sample`` call's outputs when ``batch_size`` is None; the engine holds
#: about 8 copies of its (N, samples, C, sP, sP) output while it finishes (denormalise, mask,
#: histogram matching, summarize), hence the factor below
_BATCH_BUDGET_BYTES = 64 * 2**20
_COPIES = 8


def kernel_stats() -> dict[str, int]:
    """Kernel calls and patches processed in this process since the last reset (tests, diagnostics)."""
    with _STATS_LOCK:
        return dict(_STATS)


def reset_kernel_stats() -> None:
    """Set this process's kernel counters to zero."""
    with _STATS_LOCK:
        _STATS.update(calls=0, patches=0)


def default_batch_size(samples: int, bands: int, hr_patch: int) -> int:
    """Patches per ``SRModel.sample`` call so that one call needs about 64 MiB for its outputs.

    Batching patches does not speed up the batch-invariant sampler (each patch runs alone), so
    small calls cost nothing and keep the peak memory of a block low.
    """
    per_patch = _COPIES * samples * bands * hr_patch * hr_patch * 4
    return max(1, _BATCH_BUDGET_BYTES // per_patch)


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
    n, c, h, w = patches.shape
    if seeds.shape != (n,):
        raise ValueError(f"need one seed per patch: patches {patches.shape}, seeds {seeds.shape}")
    net = get_model(spec)
    s = net.config.scale
    k = spec.n_outputs
    out = np.empty((n, k, c, s * h, s * w), dtype=np.float32)
    if n == 0:
        return out
    batch = spec.batch_size or default_batch_size(spec.samples, c, s * max(h, w))
    threads = spec.cpu_threads if net.device.type == "cpu" else None
    with model_lock(net):
        for start in range(0, n, batch):
            stop = min(start + batch, n)
            if threads is None:
                samples = _sample(net, spec, patches[start:stop], seeds[start:stop])
            else:
                with torch_threads(threads):
                    samples = _sample(net, spec, patches[start:stop], seeds[start:stop])
            mean, std = net.summarize(samples)
            out[start:stop, 0] = mean
            out[start:stop, 1] = std
            if spec.return_samples:
                out[start:stop, 2:] = samples
    with _STATS_LOCK:
        _STATS["calls"] += 1
        _STATS["patches"] += n
    return out


def _sample(net, spec: ModelSpec, lr: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    return net.sample(
        lr,
        samples=spec.samples,
        steps=spec.steps,
        eta=spec.eta,
        seed=[int(v) for v in seeds],
        histogram_matching=spec.histogram_matching,
        batch_invariant=True,
    )
