"""The training loop shared by every stage: device, seeds, checkpoint/resume, EMA, CSV, plots, progress.

A stage (:class:`Stage`: ``AutoencoderStage``, ``DiffusionStage``, ``RegressionStage``, ``SpreadStage``,
``GuidedStage``) provides ``train_step(step) -> {name: float}``, ``state_dict()``/``load_state_dict()``
(:class:`Checkpointed`: the parts it names), ``preview(step, path)`` and ``finish(stage_dir, summary)``;
:func:`train_stage` runs it, :func:`run_stage` prepares a run's stage first. Each stage's module has
one entry point of the same signature, ``train_<stage>(cfg, run_dir, *, resume, stop_at, progress)``.

Resumability: every random draw of step ``k`` (which training items, noise, timesteps, posterior
samples) comes from generators seeded by ``(seed, stage, k)`` (:func:`step_generator`), so the data
sampler's position is the step counter itself. A checkpoint holds the step, the wall time so far,
every module and optimiser state (with the EMA and the discriminator) and the global RNG states; a run
killed and resumed continues to the same weights as one that was never stopped (on the same machine
with the same thread count). Checkpoints are written every ``checkpoint_every`` steps and when the
run stops: SIGINT/SIGTERM finish the current step, save, and exit; a hard kill resumes from the
last periodic checkpoint.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import platform
import random
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from xr_opensr.errors import CheckpointError
from xr_opensr.models.pipeline import resolve_device

__all__ = [
    "EMA",
    "MetricsLog",
    "PairSampler",
    "Stage",
    "cosine_schedule",
    "hardware_summary",
    "plot_losses",
    "save_grid",
    "setup_logging",
    "set_lr",
    "setup_runtime",
    "step_generator",
    "train_stage",
]

LOG = logging.getLogger("training")
CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.csv"
SUMMARY = "summary.json"


# --------------------------------------------------------------------------- runtime


def setup_runtime(device: str = "auto", threads: int = 0) -> torch.device:
    """Resolve ``device`` ('auto' -> CUDA if present) and cap torch's CPU threads (0: leave torch's default)."""
    if threads > 0:
        torch.set_num_threads(threads)
    return resolve_device(device)


def step_generator(seed: int, stage: str, step: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A generator that depends only on (seed, stage, step): the whole randomness of one training step."""
    tag = int.from_bytes(stage.encode()[:8].ljust(8, b"\0"), "little")
    state = np.random.SeedSequence(entropy=[int(seed) & 0xFFFFFFFF, tag, int(step)])
    gen = torch.Generator(device=device)
    gen.manual_seed(int(state.generate_state(1, dtype=np.uint64)[0]) & 0x7FFF_FFFF_FFFF_FFFF)
    return gen


def cosine_schedule(total: int, warmup: int, min_ratio: float) -> Callable[[int], float]:
    """LR factor at step k: linear warm-up over ``warmup`` steps, then cosine decay to ``min_ratio``."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the learning rate of every parameter group (the schedule is a function of the step alone)."""
    for group in optimizer.param_groups:
        group["lr"] = lr


def hardware_summary(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "device": str(device),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": str(torch.__version__),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class _TqdmHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        tqdm.write(self.format(record))


def setup_logging(log_file: Path | None = None) -> logging.Logger:
    """Log to stderr (through tqdm, so progress bars stay intact) and, if given, to ``log_file``."""
    LOG.setLevel(logging.INFO)
    LOG.propagate = False
    fmt = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
    for handler in list(LOG.handlers):
        if isinstance(handler, logging.FileHandler):
            LOG.removeHandler(handler)
            handler.close()
    if not any(isinstance(h, _TqdmHandler) for h in LOG.handlers):
        handler = _TqdmHandler()
        handler.setFormatter(fmt)
        LOG.addHandler(handler)
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(log_file)
        handler.setFormatter(fmt)
        LOG.addHandler(handler)
    return LOG


# --------------------------------------------------------------------------- data sampler


class PairSampler:
    """Deterministic batches of (HR, LR) pairs from a map-style dataset: batch ``k`` is a function of
    (seed, k) only, so the sampler's position is the step counter and a resumed run draws what an
    uninterrupted one would.

    Items are visited in a fresh random order each epoch (without replacement within an epoch);
    for datasets of more than ``2**24`` items, indices are drawn independently per position.
    ``dataset[i]`` returns ``(hr, lr)`` or ``{"hr": ..., "lr": ...}``: reflectance arrays
    (4, H, W) and (4, H/4, W/4), numpy or torch.
    """

    def __init__(self, dataset: Any, seed: int = 0, name: str = "data", workers: int = 0) -> None:
        self.dataset = dataset
        self.seed = seed
        self.name = name
        self.size = len(dataset)
        if self.size < 1:
            raise ValueError("the training dataset is empty")
        if workers < 0:
            raise ValueError(f"workers must be >= 0 (0: make items in this process), got {workers}")
        self.workers = int(workers)
        self._perms: dict[int, torch.Tensor] = {}
        self._pool: Any = None
        self._ahead: tuple[tuple[int, int], Any] | None = None  # (step, batch_size), pending result

    def indices(self, step: int, batch_size: int) -> list[int]:
        out = []
        for pos in range(step * batch_size, (step + 1) * batch_size):
            if self.size > 2**24:
                gen = step_generator(self.seed, self.name, pos)
                out.append(int(torch.randint(0, self.size, (1,), generator=gen)))
                continue
            epoch, within = divmod(pos, self.size)
            if epoch not in self._perms:
                if len(self._perms) > 4:
                    self._perms.clear()
                self._perms[epoch] = torch.randperm(self.size, generator=step_generator(self.seed, self.name, epoch))
            out.append(int(self._perms[epoch][within]))
        return out

    def items(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Stacked (HR, LR) of ``dataset[i]`` for ``i`` in ``indices`` (made by the workers if any)."""
        if self.workers:
            return _stack_items(self._worker_pool().map(_make_item, indices))
        return _stack_items([self.dataset[i] for i in indices])

    def batch(self, step: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(HR (B, 4, H, W), LR (B, 4, H/4, W/4)) float32 reflectance for training step ``step``.

        With ``workers`` the items are made in worker processes and the batch of ``step + 1`` is
        prepared while the caller trains on this one; the batch is the same as without workers.
        """
        if not self.workers:
            return self.items(self.indices(step, batch_size))
        ahead, self._ahead = self._ahead, None
        if ahead is not None and ahead[0] == (step, batch_size):
            items = ahead[1].get()
        else:
            items = self._worker_pool().map(_make_item, self.indices(step, batch_size))
        self._ahead = ((step + 1, batch_size),
                       self._worker_pool().map_async(_make_item, self.indices(step + 1, batch_size)))
        return _stack_items(items)

    def _worker_pool(self) -> Any:
        """The worker processes (spawned once, on first use; each holds its own copy of the dataset)."""
        if self._pool is None:
            import multiprocessing
            import weakref

            ctx = multiprocessing.get_context("spawn")  # no fork of a process holding torch threads / CUDA
            self._pool = ctx.Pool(self.workers, initializer=_init_worker, initargs=(self.dataset,))
            weakref.finalize(self, self._pool.terminate)
            LOG.info("%s: %d data worker processes", self.name, self.workers)
        return self._pool

    def close(self) -> None:
        """Stop the worker processes (a later batch starts them again)."""
        if self._pool is not None:
            self._pool.terminate()
            self._pool, self._ahead = None, None


_WORKER_DATASET: Any = None


def _init_worker(dataset: Any) -> None:
    global _WORKER_DATASET
    _WORKER_DATASET = dataset
    torch.set_num_threads(1)


def _make_item(i: int) -> Any:
    item = _WORKER_DATASET[i]
    return (item["hr"], item["lr"]) if isinstance(item, dict) else tuple(item[:2])


def _stack_items(items: list[Any]) -> tuple[torch.Tensor, torch.Tensor]:
    hrs, lrs = [], []
    for item in items:
        hr, lr = (item["hr"], item["lr"]) if isinstance(item, dict) else item[:2]
        hrs.append(torch.as_tensor(np.asarray(hr, dtype=np.float32)))
        lrs.append(torch.as_tensor(np.asarray(lr, dtype=np.float32)))
    return torch.stack(hrs), torch.stack(lrs)


# --------------------------------------------------------------------------- data (training.data)


def training_dataset(cfg) -> Any:
    """The training pairs of ``cfg`` (a :class:`TrainConfig`): HR patches of ``cfg.hr_patch`` px."""
    from . import data

    return data.training_pairs(cfg.data_config(), cfg.degradation_config(), hr_size=cfg.hr_patch)


def synthetic_pairs(cfg, first_seed: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` synthetic (HR, LR) pairs of the model's patch size from scenes ``first_seed ... first_seed + n - 1``."""
    from . import data

    return _stack(data.synthetic_pairs(cfg.data_config(), cfg.degradation_config(), hr_size=cfg.hr_patch,
                                       seeds=range(first_seed, first_seed + n)))


def heldout_pairs(cfg, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to ``n`` (HR, LR) crops of the real scene's held-out part (Wald's protocol). Evaluation only."""
    from . import data

    return _stack(data.real_pairs(cfg.data_config(), cfg.degradation_config(), hr_size=cfg.hr_patch,
                                  split="heldout", limit=n))


def preview_data(cfg, out_dir: Path, n: int = 8) -> Path:
    """Write ``pairs.npz`` (hr, lr of the first training batch) and ``pairs.png`` (LR / bicubic / HR)."""
    from xr_opensr.metrics import bicubic_upsample

    out_dir.mkdir(parents=True, exist_ok=True)
    sampler = PairSampler(training_dataset(cfg), seed=cfg.run.seed)
    hr, lr = sampler.batch(0, n)
    np.savez_compressed(out_dir / "pairs.npz", hr=hr.numpy(), lr=lr.numpy(), indices=np.array(sampler.indices(0, n)))
    bicubic = bicubic_upsample(lr.numpy(), cfg.model.scale)
    save_grid(out_dir / "pairs.png", {"LR": lr.numpy(), "bicubic": bicubic, "HR": hr.numpy()},
              title=f"{cfg.name}: first training batch ({sampler.size} pairs)")
    LOG.info("data: %d training pairs; HR %s, LR %s; HR reflectance mean %s; wrote %s", sampler.size,
             tuple(hr.shape[1:]), tuple(lr.shape[1:]), np.round(hr.mean(dim=(0, 2, 3)).tolist(), 4), out_dir)
    return out_dir


def _stack(pairs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    return PairSampler(pairs).items(list(range(len(pairs))))


# --------------------------------------------------------------------------- EMA


class EMA:
    """Exponential moving average of a module's parameters (buffers are copied).

    The decay warms up as in LDM's ``LitEma``: ``min(decay, (1 + n) / (10 + n))`` after n updates.
    """

    def __init__(self, module: nn.Module, decay: float = 0.999) -> None:
        self.decay = float(decay)
        self.num_updates = 0
        self.shadow = {k: v.detach().clone().float() for k, v in module.state_dict().items()}

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        self.num_updates += 1
        decay = min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        params = dict(module.named_parameters())
        for key, value in module.state_dict().items():
            if key in params and value.dtype.is_floating_point:
                self.shadow[key].lerp_(value.float(), 1.0 - decay)
            else:
                self.shadow[key].copy_(value)

    def copy_to(self, module: nn.Module) -> None:
        module.load_state_dict({k: v.to(module.state_dict()[k].dtype) for k, v in self.shadow.items()})

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "num_updates": self.num_updates, "shadow": self.shadow}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.decay = float(state["decay"])
        self.num_updates = int(state["num_updates"])
        self.shadow = {k: v.clone() for k, v in state["shadow"].items()}


# --------------------------------------------------------------------------- metrics


class MetricsLog:
    """``metrics.csv``: one row per logged step; columns grow as new names appear."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: list[dict[str, Any]] = []
        if path.is_file():
            with path.open(newline="") as fh:
                self.rows = list(csv.DictReader(fh))

    def truncate(self, step: int) -> None:
        """Forget rows after ``step`` (a resumed run rewrites them)."""
        self.rows = [r for r in self.rows if int(float(r["step"])) <= step]
        self._write()

    def log(self, step: int, values: dict[str, float]) -> None:
        """Add the values of ``step`` (to its row if it is the last one)."""
        formatted = {k: f"{v:.6g}" for k, v in values.items()}
        if self.rows and int(float(self.rows[-1]["step"])) == step:
            self.rows[-1].update(formatted)
        else:
            self.rows.append({"step": step, **formatted})
        self._write()

    def _write(self) -> None:
        columns: list[str] = []
        for row in self.rows:
            columns += [c for c in row if c not in columns]
        tmp = self.path.with_suffix(".tmp")
        with tmp.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns or ["step"])
            writer.writeheader()
            writer.writerows(self.rows)
        tmp.replace(self.path)


def plot_losses(csv_path: Path, png_path: Path, title: str = "") -> None:
    """One panel per column of ``metrics.csv`` (log10 of the values where they span a decade)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = MetricsLog(csv_path).rows
    if not rows:
        return
    names = [c for c in rows[0] if c != "step"]
    for row in rows:
        names += [c for c in row if c != "step" and c not in names]
    n = len(names)
    cols = min(4, n)
    nrows = math.ceil(n / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.6 * cols, 2.6 * nrows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        pts = [(float(r["step"]), float(r[name])) for r in rows if r.get(name) not in (None, "")]
        label = name
        if pts:
            x, y = np.array(pts).T
            if (y > 0).all() and y.max() > 10 * y.min():  # log10 values on a linear axis (no mathtext: fast)
                y, label = np.log10(y), f"log10 {name}"
            ax.plot(x, y, lw=1)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.08, top=0.9, hspace=0.6, wspace=0.3)
    fig.savefig(png_path, dpi=72)
    plt.close(fig)


def _rgb(x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """(C, H, W) reflectance -> (H, W, 3) in [0, 1] from bands 0, 1, 2 (B04, B03, B02)."""
    rgb = (x[:3].transpose(1, 2, 0) - lo) / np.maximum(hi - lo, 1e-6)
    return np.clip(np.nan_to_num(rgb), 0.0, 1.0)


def save_grid(path: Path, columns: dict[str, np.ndarray], title: str = "") -> None:
    """A grid of items (rows) by panels (columns) as PNG.

    ``columns`` maps a title to (N, C, H, W) arrays: reflectance images (RGB shown, stretched by the
    2-98 % range of the first column of HR size) or, for titles starting with "std" or "|err",
    per-pixel maps (band mean, magma colour map, shared scale per row). Images smaller than the
    largest are shown nearest-neighbour upsampled.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(columns)
    n = next(iter(columns.values())).shape[0]
    size = max(a.shape[-1] for a in columns.values())
    ref_name = next(k for k in names if columns[k].shape[-1] == size and not _is_map(k))
    fig, axes = plt.subplots(n, len(names), figsize=(2.2 * len(names), 2.2 * n), squeeze=False)
    for i in range(n):
        ref = columns[ref_name][i, :3].transpose(1, 2, 0).reshape(-1, 3)
        lo, hi = np.nanpercentile(ref, 2, axis=0), np.nanpercentile(ref, 98, axis=0)
        maps = [np.nanmean(columns[k][i], axis=0) for k in names if _is_map(k)]
        vmax = max([float(np.nanpercentile(m, 99)) for m in maps] + [1e-6])
        for j, name in enumerate(names):
            img = columns[name][i]
            rep = size // img.shape[-1]
            if rep > 1:
                img = img.repeat(rep, axis=-1).repeat(rep, axis=-2)
            ax = axes[i, j]
            if _is_map(name):
                ax.imshow(np.nanmean(img, axis=0), cmap="magma", vmin=0.0, vmax=vmax)
            else:
                ax.imshow(_rgb(img, lo, hi))
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(name, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.9, hspace=0.05, wspace=0.05)
    fig.savefig(path, dpi=72)
    plt.close(fig)


def _is_map(name: str) -> bool:
    return name.startswith(("std", "|err"))


# --------------------------------------------------------------------------- checkpoints


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state(legacy=False)  # noqa: NPY002 (the global state is what is saved)
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {**np_state, "state": {k: torch.as_tensor(np.asarray(v).astype(np.int64)) if k == "key" else int(v)
                                        for k, v in np_state["state"].items()}},
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np_state = dict(state["numpy"])
    np_state["state"] = {k: (v.numpy().astype(np.uint32) if k == "key" else v) for k, v in np_state["state"].items()}
    np.random.set_state(np_state)  # noqa: NPY002
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, step: int, wall_s: float, stage_state: dict[str, Any], extra: dict[str, Any]) -> None:
    """Write atomically (temporary file, then rename): a kill during the write keeps the previous one."""
    tmp = path.with_suffix(".tmp")
    torch.save({"step": step, "wall_s": wall_s, "stage": stage_state, "rng": _rng_state(), **extra}, tmp)
    tmp.replace(path)


#: entries every training checkpoint holds (``save_checkpoint``)
_CHECKPOINT_KEYS = ("step", "wall_s", "stage", "rng")


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a training checkpoint (tensors and plain data only: no pickled code runs).

    Raises CheckpointError when the file is truncated, corrupt or not a checkpoint of this loop.
    """
    damaged = (f"A kill during a save never damages the previous checkpoint (it is written to a temporary "
               f"file, then renamed), so this file was damaged otherwise (disk full, partial copy): restore it, "
               f"or start the stage afresh in a new --out folder (or after deleting {path})")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises RuntimeError, EOFError, UnpicklingError ... on a bad file
        detail = (str(err).strip().splitlines() or [""])[0][:200]
        raise CheckpointError(
            f"cannot resume from {path}: the checkpoint is truncated or corrupt ({type(err).__name__}: {detail}). "
            + damaged
        ) from err
    missing = [k for k in _CHECKPOINT_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise CheckpointError(f"cannot resume from {path}: it is not a training checkpoint (missing {missing}). "
                              + damaged)
    return ckpt


def _resume(stage: Stage, ckpt: dict[str, Any], path: Path) -> None:
    """Restore the stage and the random generators from a checkpoint; a mismatch is a CheckpointError."""
    try:
        stage.load_state_dict(ckpt["stage"])
        _set_rng_state(ckpt["rng"])
    except (KeyError, RuntimeError, ValueError, TypeError, IndexError) as err:
        detail = (str(err).strip().splitlines() or [""])[0][:200]
        raise CheckpointError(
            f"cannot resume from {path}: it does not fit this stage and config ({type(err).__name__}: {detail}); "
            "resume with the config the run started with (train_config.json beside it), or start afresh "
            "in a new --out folder"
        ) from err


# --------------------------------------------------------------------------- the loop


def prepare_stage(cfg, stage_dir: Path, resume: bool) -> tuple[torch.device, PairSampler, tuple, dict[str, Any]]:
    """Logging, device and threads, the training sampler, the preview pairs (validation scenes) and
    the run info of a stage; writes the resolved config beside the checkpoint."""
    stage_dir.mkdir(parents=True, exist_ok=True)
    setup_logging(stage_dir / "log.txt")
    device = setup_runtime(cfg.run.device, cfg.run.threads)
    saved = stage_dir / "train_config.json"
    if resume and saved.is_file() and json.loads(saved.read_text()) != json.loads(json.dumps(cfg.to_dict())):
        LOG.warning("%s: the config differs from the one this run started with (%s)", stage_dir.name, saved)
    cfg.to_json(saved)
    sampler = PairSampler(training_dataset(cfg), seed=cfg.run.seed, workers=cfg.run.data_workers)
    preview = synthetic_pairs(cfg, cfg.evaluate.validation_seed, cfg.run.preview_items)
    info = {"hardware": hardware_summary(device)}
    LOG.info("%s: device %s, %d torch threads, %d training pairs", stage_dir.name, device,
             torch.get_num_threads(), sampler.size)
    return device, sampler, preview, info


class Checkpointed:
    """A stage's ``state_dict``/``load_state_dict`` over its parts: ``CHECKPOINTED`` maps a checkpoint
    key to the attribute holding the part (a module, an optimiser, an EMA: anything with both methods)."""

    CHECKPOINTED: dict[str, str] = {}

    def state_dict(self) -> dict[str, Any]:
        return {key: getattr(self, attr).state_dict() for key, attr in self.CHECKPOINTED.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, attr in self.CHECKPOINTED.items():
            getattr(self, attr).load_state_dict(state[key])


class Stage(Protocol):
    name: str

    def train_step(self, step: int) -> dict[str, float]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def preview(self, step: int, path: Path) -> dict[str, float]: ...

    def finish(self, stage_dir: Path, summary: dict[str, Any]) -> None: ...


class _StopRequest:
    """SIGINT/SIGTERM ask the loop to stop at the end of the current step (then checkpoint and exit);
    a second Ctrl-C stops at once, without saving a half-done step."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def _handler(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        LOG.warning("signal %d: stopping after this step (Ctrl-C again to stop at once, unsaved)", signum)

    def __enter__(self) -> _StopRequest:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handler)
            except ValueError:  # not in the main thread: signals stay as they are
                break
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def run_stage(cfg, stage_dir: Path, make_stage: Callable[..., Any], steps: int, *, resume: bool,
              stop_at: int | None, progress: bool) -> dict[str, Any]:
    """Prepare a stage (:func:`prepare_stage`), build it with ``make_stage(device, sampler, preview)``
    and train it (:func:`train_stage`) with the run's logging/checkpoint/preview intervals."""
    device, sampler, preview, info = prepare_stage(cfg, stage_dir, resume)
    return train_stage(make_stage(device, sampler, preview), stage_dir, steps=steps, resume=resume,
                       log_every=cfg.run.log_every, checkpoint_every=cfg.run.checkpoint_every,
                       sample_every=cfg.run.sample_every, progress=progress, stop_at=stop_at, info=info)


def train_stage(
    stage: Stage,
    stage_dir: Path,
    *,
    steps: int,
    resume: bool = False,
    log_every: int = 10,
    checkpoint_every: int = 100,
    sample_every: int = 200,
    progress: bool = True,
    stop_at: int | None = None,
    info: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run ``stage`` from its checkpoint (``resume``) or from scratch up to ``steps`` steps.

    ``stop_at`` stops after that many steps as if the run had been killed there (checkpoint, no
    ``finish``); the tests use it. Returns the summary that ``finish`` receives (also written to
    ``summary.json`` once the run is complete).
    """
    stage_dir.mkdir(parents=True, exist_ok=True)
    (stage_dir / "samples").mkdir(exist_ok=True)
    ckpt_path = stage_dir / CHECKPOINT
    metrics = MetricsLog(stage_dir / METRICS)
    start, wall_before = 0, 0.0
    if resume:
        if not ckpt_path.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint at {ckpt_path}; run the stage without --resume first")
        ckpt = load_checkpoint(ckpt_path)
        _resume(stage, ckpt, ckpt_path)
        start, wall_before = int(ckpt["step"]), float(ckpt["wall_s"])
        metrics.truncate(start)
        LOG.info("%s: resumed from %s at step %d (%.1f min of training so far)", stage.name, ckpt_path, start, wall_before / 60)
    else:
        if ckpt_path.exists():
            raise FileExistsError(
                f"{ckpt_path} exists: pass --resume to continue that run, or choose another --out folder"
            )
        metrics.truncate(-1)
    if start >= steps:
        LOG.info("%s: already at step %d of %d", stage.name, start, steps)

    session_start = time.perf_counter()
    timings: list[float] = []
    window: dict[str, list[float]] = {}
    step = start
    extra = {"info": info or {}}

    def wall() -> float:
        return wall_before + time.perf_counter() - session_start

    def checkpoint() -> None:
        save_checkpoint(ckpt_path, step, wall(), stage.state_dict(), extra)

    def plot() -> None:
        plot_losses(stage_dir / METRICS, stage_dir / "losses.png", title=stage.name)

    from tqdm import tqdm

    bar = tqdm(total=steps, initial=start, desc=stage.name, disable=not progress, dynamic_ncols=True, mininterval=2.0)
    completed = False
    in_step = False
    try:
        with _StopRequest() as stop:
            while step < steps:
                if stop_at is not None and step >= stop_at:
                    LOG.info("%s: stopping at step %d (stop_at)", stage.name, step)
                    break
                t0 = time.perf_counter()
                in_step = True
                values = stage.train_step(step)
                step += 1
                in_step = False
                timings.append(time.perf_counter() - t0)
                for k, v in values.items():
                    window.setdefault(k, []).append(float(v))
                if len(timings) == 4 and step < steps:  # the first step of a session warms caches up
                    per = float(np.mean(timings[1:]))
                    LOG.info(
                        "%s: %.2f s/step -> about %.1f min for the remaining %d steps (plus previews)",
                        stage.name, per, per * (steps - step) / 60, steps - step,
                    )
                bar.update(1)
                if step % log_every == 0 or step == steps:
                    row = {k: float(np.mean(v)) for k, v in window.items()}
                    row["s_per_step"] = float(np.mean(timings[-len(next(iter(window.values()))):]))
                    metrics.log(step, row)
                    bar.set_postfix({k: f"{v:.4g}" for k, v in list(row.items())[:3]})
                    window = {}
                if sample_every and (step % sample_every == 0 or step == steps):
                    scores = stage.preview(step, stage_dir / "samples" / f"step_{step:06d}.png")
                    if scores:
                        metrics.log(step, scores)
                        LOG.info("%s step %d: %s", stage.name, step,
                                 ", ".join(f"{k} {v:.4g}" for k, v in scores.items()))
                    plot()
                if step % checkpoint_every == 0:
                    checkpoint()
                if stop.requested:
                    raise KeyboardInterrupt
            completed = step >= steps
    except KeyboardInterrupt:
        if in_step:  # stopped inside a step: its state is half-updated, keep the last checkpoint
            LOG.warning("%s: stopped during step %d; continue with --resume from the last checkpoint",
                        stage.name, step + 1)
        else:
            LOG.warning("%s: stopped after step %d; checkpoint saved (continue with --resume)", stage.name, step)
            checkpoint()
            if sample_every:
                plot()
        raise
    finally:
        bar.close()
    checkpoint()
    if sample_every and not completed:
        plot()
    summary = {
        "stage": stage.name,
        "steps": step,
        "wall_s": round(wall(), 1),
        "s_per_step": round(float(np.mean(timings[1:] or timings or [0.0])), 4),
        "last": metrics.rows[-1] if metrics.rows else {},
        **extra["info"],
    }
    if completed:
        stage.finish(stage_dir, summary)
        (stage_dir / SUMMARY).write_text(json.dumps(summary, indent=2, default=str) + "\n")
        LOG.info("%s: done, %d steps in %.1f min", stage.name, step, summary["wall_s"] / 60)
    return summary
