"""Model spec -> model, loaded once per process and reused (threads, processes, dask workers).

Only a :class:`ModelSpec` (a few strings and numbers, frozen and hashable) travels in the dask
graph. Each process that runs a patch task turns it into a model (:class:`xr_opensr.models.base.Model`)
with :func:`get_model`, which loads the weights the first time (through the registry) and then returns
the cached model. torch is imported lazily, inside the functions.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .models.base import SampleOptions

if TYPE_CHECKING:  # pragma: no cover
    from .models.base import Model

__all__ = ["ModelRef", "ModelSpec", "get_model", "load_count", "clear_cache", "model_lock", "torch_threads", "local_cluster"]


@dataclass(frozen=True)
class ModelRef:
    """What to load: the model (and the 20 m model of a chain), where and in which dtype.

    Attributes
    ----------
    model : a model name (``"default"``, ``"tiny"``, ``"bicubic"``, a registered one) or the absolute path
        of a model folder, ``.safetensors`` file or LDSR-S2 ``.ckpt`` file
        (:func:`xr_opensr.models.registry.load`).
    device : ``"auto"`` (CUDA if the process sees a GPU, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``.
        Resolved in the process that runs the task.
    dtype : compute dtype name (``None``/``"float32"``, ``"bfloat16"``, ``"float16"``).
    ema : for ``.ckpt`` files, use the EMA UNet weights.
    compile : run the denoiser through ``torch.compile`` (CUDA graphs on a GPU).
    model20 : the 20 m-band model of a chain (``"s2-20m"`` or the absolute path of a folder); None: none.
    """

    model: str = "default"
    device: str = "auto"
    dtype: str | None = None
    ema: bool | None = None
    compile: bool = False
    model20: str | None = None


@dataclass(frozen=True)
class ModelSpec:
    """What a patch task needs; small, frozen, hashable, picklable: it travels in the dask graph.

    Attributes
    ----------
    ref : which model to load (:class:`ModelRef`).
    options : how to run it (:class:`~xr_opensr.models.base.SampleOptions`).
    bands20 : the native 20 m bands in the patches after the model bands (then the model run is the
        chain of the model and ``ref.model20``, :class:`~xr_opensr.models.chain.Chain`), in the 20 m model's
        order; empty: the model alone.
    phase20 : (row, column) of the patches' first pixel within the 20 m grid, 0 or 1 (10 m pixels).
    cpu_threads : torch intra-op threads of a task on the CPU, fixed per run (torch's CPU results can
        depend on the thread count). Default 1: dask runs one task per core.
    """

    ref: ModelRef = ModelRef()
    options: SampleOptions = SampleOptions()
    bands20: tuple[str, ...] = ()
    phase20: tuple[int, int] = (0, 0)
    cpu_threads: int = 1

    @property
    def n_outputs(self) -> int:
        """Planes per band the kernel returns: mean, std, the model's extra outputs (and the samples)."""
        return self.options.n_outputs + len(get_model(self).info.extra_outputs)


_LOADS = 0
_LOADS_LOCK = threading.Lock()


@functools.lru_cache(maxsize=8)
def _load(model: str, device: str, dtype: str | None, ema: bool | None, compile: bool = False) -> Any:
    global _LOADS
    from .models.registry import load

    net = load(model, device=device, dtype=dtype, ema=ema)
    if hasattr(net, "prepare_inference"):  # once, before any thread of this process samples with it
        net.prepare_inference()
    if compile and hasattr(net, "compile_denoiser"):
        net.compile_denoiser()
    with _LOADS_LOCK:
        _LOADS += 1
    return net


@functools.lru_cache(maxsize=8)
def _chain(ref: ModelRef, bands20: tuple[str, ...], phase20: tuple[int, int]) -> Any:
    from .models.chain import Chain

    base = _load(ref.model, ref.device, ref.dtype, ref.ema, ref.compile)
    guided = _load(ref.model20, str(base.device), None, None)
    return Chain(base, guided, bands20=bands20, phase20=phase20)


_LOAD_LOCK = threading.Lock()


def get_model(spec: ModelSpec | ModelRef) -> Model:
    """The model a task of ``spec`` runs, loaded on first use in this process and cached (keyed by the
    load fields; sampling settings do not reload): the model of ``spec.ref``, or, with ``spec.bands20``,
    its chain with the 20 m model (loaded on the same device). One model per device per process: a dask
    worker per GPU holds one copy.

    Raises the errors of :func:`xr_opensr.models.registry.load` (ModelError, CheckpointError,
    ConfigError, DeviceError).
    """
    ref = spec if isinstance(spec, ModelRef) else spec.ref
    with _LOAD_LOCK:  # two threads asking at once load once
        if isinstance(spec, ModelSpec) and spec.bands20:
            if ref.model20 is None:
                from .errors import InputError

                raise InputError("20 m bands in the patches but no 20 m model: set ModelRef.model20 (e.g. 's2-20m')")
            return _chain(ref, spec.bands20, spec.phase20)
        return _load(ref.model, ref.device, ref.dtype, ref.ema, ref.compile)


def load_count() -> int:
    """How many models this process has loaded (for tests and diagnostics)."""
    return _LOADS


def clear_cache() -> None:
    """Forget the cached models of this process (the next :func:`get_model` loads again)."""
    _load.cache_clear()
    _chain.cache_clear()


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
