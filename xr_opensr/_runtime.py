"""Model spec -> model, loaded once per process and reused (threads, processes, dask workers).

Only a :class:`ModelSpec` (a few strings and numbers, frozen and hashable) travels in the dask
graph. Each process that runs a patch task turns it into an :class:`~xr_opensr.models.SRModel`
with :func:`get_model`, which loads the weights the first time and then returns the cached model.
torch is imported lazily, inside the functions.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from .models import SRModel

__all__ = ["ModelSpec", "get_model", "load_count", "clear_cache", "model_lock", "torch_threads"]


@dataclass(frozen=True)
class ModelSpec:
    """What a patch task needs to load a model and sample it; small, frozen, hashable, picklable.

    Attributes
    ----------
    model : registered model name (``"default"``, ``"tiny"``) or absolute path of a model folder,
        ``.safetensors`` file or LDSR-S2 ``.ckpt`` file.
    device : ``"auto"`` (CUDA if the process sees a GPU, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``.
        Resolved in the process that runs the task.
    dtype : denoiser compute dtype name (``None``/``"float32"``, ``"bfloat16"``, ``"float16"``).
    ema : for ``.ckpt`` files, use the EMA UNet weights.
    samples : samples drawn per patch (>= 1).
    steps, eta : DDIM settings; ``None`` = the model's defaults.
    histogram_matching : match each sample band to the LR patch's histogram.
    return_samples : the kernel returns the samples too, not only their mean and std.
    batch_size : patches per ``SRModel.sample`` call; ``None`` = as many as fit in ~64 MiB.
    cpu_threads : torch intra-op threads while a patch batch runs on the CPU. Fixed (default 1)
        because torch's CPU results depend on the thread count; dask gives the parallelism.
    """

    model: str = "default"
    device: str = "auto"
    dtype: str | None = None
    ema: bool | None = None
    samples: int = 1
    steps: int | None = None
    eta: float | None = None
    histogram_matching: bool = True
    return_samples: bool = False
    batch_size: int | None = None
    cpu_threads: int = 1

    @property
    def n_outputs(self) -> int:
        """Planes per band the kernel returns: mean, std (and the samples)."""
        return 2 + (self.samples if self.return_samples else 0)


_LOADS = 0
_LOADS_LOCK = threading.Lock()


@functools.lru_cache(maxsize=4)
def _load(model: str, device: str, dtype: str | None, ema: bool | None) -> SRModel:
    global _LOADS
    from .models import load_model

    net = load_model(model, device=device, dtype=dtype, ema=ema)
    with _LOADS_LOCK:
        _LOADS += 1
    return net


_LOAD_LOCK = threading.Lock()


def get_model(spec: ModelSpec) -> SRModel:
    """The model of ``spec``, loaded on first use in this process and cached (keyed by the load
    fields: model, device, dtype, ema; sampling settings do not reload).

    Raises the errors of :func:`xr_opensr.load_model` (ModelError, CheckpointError, DeviceError).
    """
    with _LOAD_LOCK:  # two threads asking at once load once
        return _load(spec.model, spec.device, spec.dtype, spec.ema)


def load_count() -> int:
    """How many models this process has loaded (for tests and diagnostics)."""
    return _LOADS


def clear_cache() -> None:
    """Forget the cached models of this process (the next :func:`get_model` loads again)."""
    _load.cache_clear()


_DEVICE_LOCKS: dict[str, threading.Lock] = {}


@contextlib.contextmanager
def model_lock(net: Any) -> Iterator[None]:
    """One patch batch at a time per GPU in this process; no lock on the CPU."""
    device = str(net.device)
    if not device.startswith("cuda"):
        yield
        return
    with _LOAD_LOCK:
        lock = _DEVICE_LOCKS.setdefault(device, threading.Lock())
    with lock:
        yield


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run torch on ``n`` intra-op threads in this thread while inside, then restore the setting.

    With torch's OpenMP backend (the default on Linux) the setting belongs to the calling thread,
    so concurrent dask threads do not disturb each other.
    """
    import torch

    saved = torch.get_num_threads()
    if saved != n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if saved != n:
            torch.set_num_threads(saved)
