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

__all__ = ["ModelSpec", "get_model", "get_guided", "load_count", "clear_cache", "model_lock", "torch_threads", "local_cluster"]


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
    batch_size : (patch, sample) latents per network call; ``None`` = the model's choice for the
        device (:meth:`~xr_opensr.models.SRModel.batch_limit`: from the model and the device's type
        and total memory, never from the load of the moment). Every call of a run has this shape.
    cpu_threads : torch intra-op threads of a task on the CPU, fixed per run (torch's CPU results
        can depend on the thread count). Default 1: dask runs one task per core. Raise it when a
        process has more cores than concurrent tasks (one block, or a dask worker with
        ``nthreads=1`` on a multi-core machine).
    compile : run the denoiser through ``torch.compile`` (CUDA graphs on a GPU).
    model20 : the 20 m-band model (``"s2-20m"`` or the absolute path of a folder), None: no 20 m path.
    bands20 : the native 20 m bands in the patches after the model bands (the 20 m path runs when
        not empty), in the 20 m model's order.
    phase20 : (row, column) of the patches' first pixel within the 20 m grid, 0 or 1 (10 m pixels):
        where the 2 x 2 blocks of 10 m pixels holding one 20 m pixel begin.
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
    compile: bool = False
    model20: str | None = None
    bands20: tuple[str, ...] = ()
    phase20: tuple[int, int] = (0, 0)

    @property
    def n_outputs(self) -> int:
        """Planes per band the kernel returns: mean, std (and the samples)."""
        return 2 + (self.samples if self.return_samples else 0)


_LOADS = 0
_LOADS_LOCK = threading.Lock()


@functools.lru_cache(maxsize=4)
def _load(model: str, device: str, dtype: str | None, ema: bool | None, compile: bool = False) -> SRModel:
    global _LOADS
    from .models import load_model

    net = load_model(model, device=device, dtype=dtype, ema=ema)
    if hasattr(net, "prepare_inference"):  # once, before any thread of this process samples with it
        net.prepare_inference()
    if compile and hasattr(net, "compile_denoiser"):
        net.compile_denoiser()
    with _LOADS_LOCK:
        _LOADS += 1
    return net


_LOAD_LOCK = threading.Lock()


def get_model(spec: ModelSpec) -> SRModel:
    """The model of ``spec``, loaded on first use in this process and cached (keyed by the load
    fields: model, device, dtype, ema, compile; sampling settings do not reload). One model per
    device per process: a dask worker per GPU holds one copy.

    Raises the errors of :func:`xr_opensr.load_model` (ModelError, CheckpointError, DeviceError),
    and InputError for ``samples`` above :data:`~xr_opensr.models.pipeline.MAX_SAMPLES` or a
    ``cpu_threads`` below 1.
    """
    from .errors import InputError
    from .models.pipeline import MAX_SAMPLES

    if not 0 <= spec.samples <= MAX_SAMPLES:
        raise InputError(f"samples must be in [0, {MAX_SAMPLES}] (memory does not grow with samples, time "
                         f"does), got {spec.samples}")
    if spec.cpu_threads < 1:
        raise InputError(f"threads must be a positive integer, got {spec.cpu_threads}")
    with _LOAD_LOCK:  # two threads asking at once load once
        return _load(spec.model, spec.device, spec.dtype, spec.ema, spec.compile)


@functools.lru_cache(maxsize=4)
def _load_guided(model20: str, device: str) -> Any:
    global _LOADS
    from .models.guided import load_guided

    net = load_guided(model20, device=device)
    with _LOADS_LOCK:
        _LOADS += 1
    return net


def get_guided(spec: ModelSpec) -> Any:
    """The 20 m-band model of ``spec`` (:class:`~xr_opensr.models.guided.GuidedSR`), on the device of
    ``get_model(spec)``, loaded on first use in this process and cached. Raises the errors of
    :func:`~xr_opensr.models.guided.load_guided` (InputError, ConfigError, CheckpointError)."""
    from .errors import InputError

    if spec.model20 is None:
        raise InputError("no 20 m model in this ModelSpec: set model20 (e.g. 's2-20m')")
    device = str(get_model(spec).device)
    with _LOAD_LOCK:
        return _load_guided(spec.model20, device)


def load_count() -> int:
    """How many models this process has loaded (for tests and diagnostics)."""
    return _LOADS


def clear_cache() -> None:
    """Forget the cached models of this process (the next :func:`get_model` loads again)."""
    _load.cache_clear()
    _load_guided.cache_clear()


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
def torch_threads(n: int | None) -> Iterator[None]:
    """Run torch on ``n`` intra-op threads in this thread while inside, then restore the setting
    (None: leave it as it is).

    With torch's OpenMP backend (the default on Linux) the setting belongs to the calling thread,
    so concurrent dask threads do not disturb each other.
    """
    if n is None:
        yield
        return
    import torch

    saved = torch.get_num_threads()
    if saved != n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if saved != n:
            torch.set_num_threads(saved)


def local_cluster(device: str = "auto", *, threads: int = 1, n_workers: int | None = None, **kwargs: Any):
    """A dask.distributed cluster on this machine laid out for super-resolution.

    - GPUs (``device`` "auto" with a GPU visible, or "cuda"): one worker process per GPU, each
      seeing only its GPU (``dask_cuda.LocalCUDACluster``, the ``xr-opensr[cuda]`` extra), one
      thread per worker: one model per GPU per worker and one block in flight per GPU.
    - CPU: ``distributed.LocalCluster`` with ``n_workers`` processes (default: cores / ``threads``)
      of one task each, a task running torch on ``threads`` intra-op threads (pass the same
      number to ``superresolve(..., threads=...)``).

    Extra keyword arguments go to the cluster class. Returns the cluster (use it with
    ``distributed.Client(cluster)``; close both when done).
    """
    import os

    from .errors import InputError

    try:
        import distributed
    except ImportError as err:  # pragma: no cover - the extra is installed in the tests
        raise ImportError("a local cluster needs dask.distributed: pip install 'xr-opensr[distributed]'") from err
    kwargs.setdefault("dashboard_address", None)
    if _wants_gpu(device):
        try:
            from dask_cuda import LocalCUDACluster
        except ImportError as err:
            raise ImportError("one worker per GPU needs dask-cuda: pip install 'xr-opensr[cuda]'") from err
        return LocalCUDACluster(n_workers=n_workers, threads_per_worker=1, **kwargs)
    if device not in ("auto", "cpu"):
        raise InputError(f"device={device!r} for a local cluster: use 'auto', 'cpu' or 'cuda'")
    n = n_workers or max(1, (os.cpu_count() or 1) // max(1, threads))
    return distributed.LocalCluster(n_workers=n, threads_per_worker=1, processes=True, **kwargs)


def _wants_gpu(device: str) -> bool:
    """True for "cuda"/"cuda:N", and for "auto" when this process sees a CUDA GPU."""
    if device.startswith("cuda"):
        return True
    if device != "auto":
        return False
    import torch

    return torch.cuda.is_available()
