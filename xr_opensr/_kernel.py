"""The patch kernel: numpy in, numpy out; the only place the dask graph touches a model.

``run_patches(spec, patches, seeds)`` runs the model of ``spec`` (:func:`xr_opensr._runtime.get_model`:
the model, or its chain with the 20 m model when the patches hold 20 m bands) once on N patches through
the model interface (:meth:`xr_opensr.models.base.Model.run`). Nothing here is specific to a model kind:
what a model does with its patches (diffusion samples reduced to running sums, a mean network, the 20 m
path) is the model's own business, and so is its nodata rule (:func:`valid_mask`).
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from ._runtime import ModelSpec, get_model, model_lock, torch_threads

__all__ = ["run_patches", "kernel_stats", "reset_kernel_stats", "valid_mask"]

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


def run_patches(spec: ModelSpec, patches: np.ndarray, seeds: np.ndarray, context: np.ndarray | None = None
                ) -> np.ndarray:
    """Super-resolve a stack of LR patches with the model of ``spec``, in one ``model.run`` call.

    Parameters
    ----------
    spec : the model and how to run it (loaded once per process, see :mod:`xr_opensr._runtime`).
    patches : (N, *W, C, P, P) float32 reflectance in the model's band order (``W``: the model's whole
        core dims, none for a single-date model); NaN = nodata.
    seeds : (N,) non-negative integers, the noise seed of each patch (its result depends only on
        its own seed, not on its batch mates).
    context : the scene-level input of a model that declares one (``info.context``), per patch (N, ...); None
        for the others.

    Returns
    -------
    (N, K, C, s*P, s*P) float32 with s = the model's scale: plane 0 the mean, plane 1 the standard
    deviation (NaN where the model gives none), planes 2.. the samples when ``spec.options.return_samples``
    (K = 2 + samples), else K = 2. NaN where the model's nodata rule says (:func:`valid_mask`).
    """
    patches = np.asarray(patches, dtype=np.float32)
    seeds = np.asarray(seeds)
    if seeds.shape != (patches.shape[0],):
        raise ValueError(f"need one seed per patch: patches {patches.shape}, seeds {seeds.shape}")
    net = get_model(spec)
    threads = spec.cpu_threads if net.device.type == "cpu" else None
    with model_lock(net), torch_threads(threads):
        if context is None:
            out = net.run(patches, seeds.astype(np.uint64), spec.options)
        else:
            out = net.run(patches, seeds.astype(np.uint64), spec.options, context=context)
    with _STATS_LOCK:
        _STATS["calls"] += 1
        _STATS["patches"] += patches.shape[0]
    return out


def valid_mask(model: Any, patches: np.ndarray) -> np.ndarray:
    """(N, C, P, P) bool: where each output channel of ``model`` is defined for ``patches`` (N, *W, C, P, P).
    The model's own rule (``model.valid``, e.g. a chain's per-band 20 m nodata) or the default: a pixel
    is valid where every band is, at some entry of the whole core dims (a date, for a multi-date model)."""
    rule = getattr(model, "valid", None)
    if rule is not None:
        return rule(patches)
    ok = np.isfinite(patches).all(axis=-3)  # (N, *W, P, P)
    ok = ok.reshape((ok.shape[0], -1, *ok.shape[-2:])).any(axis=1)[:, None]  # (N, 1, P, P)
    return np.broadcast_to(ok, (patches.shape[0], patches.shape[-3], *patches.shape[-2:]))
