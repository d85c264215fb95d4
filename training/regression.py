"""Stage "regression": a deterministic CNN baseline, trained on the same pairs with an L1 loss.

It shows what a plain regression network gives with the same data and budget, so that
``training evaluate`` can place the diffusion model on the distortion-perception trade-off (PSNR
vs LPIPS, hallucination vs improvement). The network (:class:`RegressionNet`) is EDSR-like
(Lim et al. 2017, without batch norm) and works at LR resolution:

1. ``x = lr * input_gain + input_offset`` (the diffusion model's normalisation);
2. head: 3x3 conv, bands -> ``channels``;
3. ``blocks`` residual blocks ``h + res_scale * conv(relu(conv(h)))``, then a 3x3 conv, plus the
   head's output (global skip);
4. a 3x3 conv to ``bands * scale**2`` channels and PixelShuffle(``scale``) (initialised to zero);
5. the result, divided by ``input_gain``, is added to the bicubic upsampling of the LR
   (:func:`xr_opensr.sensor.bicubic_upsample`, Keys a = -0.5): the network learns the residual.

With 10 blocks of 32 channels and 4 bands it has 214 k parameters. Training runs in
:func:`training.loop.train_stage` (checkpoints, ``--resume``, metrics.csv, previews): Adam, linear
warm-up then cosine decay, gradient clipping, L1 on reflectance. At the end the weights and their
config are written to ``<run>/regression/regression.safetensors`` (the config as JSON in the
safetensors metadata), which ``training evaluate`` reads with :func:`load_regression`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from xr_opensr.errors import InputError, ModelError
from xr_opensr.metrics import psnr
from xr_opensr.sensor import bicubic_upsample

from .config import TrainConfig
from .loop import LOG, PairSampler, cosine_schedule, run_stage, save_grid, set_lr

__all__ = ["REGRESSION_FILE", "RegressionConfig", "RegressionNet", "RegressionStage", "load_regression",
           "train_regression"]

REGRESSION_FILE = "regression.safetensors"
_FORMAT = "xr-opensr regression baseline 1"


@dataclass(frozen=True)
class RegressionConfig:
    """Architecture of :class:`RegressionNet` (stored with its weights)."""

    bands: tuple[str, ...] = ("B04", "B03", "B02", "B08")
    scale: int = 4
    channels: int = 32
    blocks: int = 10
    res_scale: float = 1.0
    input_gain: tuple[float, ...] = (4.0, 4.0, 4.0, 4.0)
    input_offset: tuple[float, ...] = (-1.0, -1.0, -1.0, -1.0)

    @classmethod
    def of(cls, cfg: TrainConfig) -> RegressionConfig:
        """The architecture of a training config: its ``regression`` section and the model's bands/scale/normalisation."""
        m, r = cfg.model, cfg.regression
        return cls(bands=tuple(m.bands), scale=m.scale, channels=r.channels, blocks=r.blocks, res_scale=r.res_scale,
                   input_gain=tuple(m.input_gain), input_offset=tuple(m.input_offset))


class _ResBlock(nn.Module):
    def __init__(self, channels: int, res_scale: float) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.res_scale = res_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.res_scale * self.conv2(F.relu(self.conv1(x)))


class RegressionNet(nn.Module):
    """EDSR-like residual CNN on bicubic (see the module docstring): reflectance in, reflectance out."""

    def __init__(self, config: RegressionConfig) -> None:
        super().__init__()
        self.config = config
        n, c, s = len(config.bands), config.channels, config.scale
        self.head = nn.Conv2d(n, c, 3, padding=1)
        self.body = nn.Sequential(*[_ResBlock(c, config.res_scale) for _ in range(config.blocks)])
        self.body_out = nn.Conv2d(c, c, 3, padding=1)
        self.up = nn.Conv2d(c, n * s * s, 3, padding=1)
        self.shuffle = nn.PixelShuffle(s)
        nn.init.zeros_(self.up.weight)  # starts as bicubic
        nn.init.zeros_(self.up.bias)
        self.register_buffer("gain", torch.tensor(config.input_gain, dtype=torch.float32).view(1, n, 1, 1))
        self.register_buffer("offset", torch.tensor(config.input_offset, dtype=torch.float32).view(1, n, 1, 1))

    def forward(self, lr: torch.Tensor, bicubic: torch.Tensor) -> torch.Tensor:
        """``lr`` (B, C, h, w) and its bicubic upsampling (B, C, s h, s w), reflectance -> SR (B, C, s h, s w)."""
        head = self.head(lr * self.gain + self.offset)
        feat = self.body_out(self.body(head)) + head
        return bicubic + self.shuffle(self.up(feat)) / self.gain

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    @torch.no_grad()
    def predict(self, lr: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """SR of LR patches (N, C, h, w) float reflectance (finite) -> (N, C, s h, s w) float32."""
        lr = np.asarray(lr, dtype=np.float32)
        if lr.ndim != 4 or lr.shape[1] != len(self.config.bands):
            raise InputError(f"the regression baseline takes LR patches (N, {len(self.config.bands)}, h, w), "
                             f"got shape {lr.shape}")
        if not np.isfinite(lr).all():
            raise InputError("the regression baseline needs finite LR patches (no NaN/nodata): crop or fill them first")
        out = []
        for a in range(0, lr.shape[0], batch_size):
            chunk = lr[a:a + batch_size]
            base = torch.from_numpy(np.asarray(bicubic_upsample(chunk, self.config.scale), dtype=np.float32))
            out.append(self(torch.from_numpy(chunk).to(self.device), base.to(self.device)).float().cpu().numpy())
        return np.concatenate(out)


def save_regression(net: RegressionNet, path: Path, provenance: dict[str, Any] | None = None) -> Path:
    """Write the weights and (as metadata) the config and provenance to one safetensors file."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().float().contiguous() for k, v in net.state_dict().items()}
    meta = {"format": _FORMAT, "config": json.dumps(dataclasses.asdict(net.config)),
            "provenance": json.dumps(provenance or {})}
    save_file(state, str(path), metadata=meta)
    return Path(path)


def load_regression(path: str | Path, device: str | torch.device = "cpu") -> RegressionNet:
    """The regression baseline of a ``regression.safetensors`` file (strict), in eval mode."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no regression baseline at {path}: train it with "
                                "`python -m training regression --config ...` (same --out), or pass --regression FILE")
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata() or {}
    if meta.get("format") != _FORMAT:
        raise ModelError(f"{path} is not a regression baseline of xr-opensr (format {meta.get('format')!r}, "
                         f"expected {_FORMAT!r}); write it with `python -m training regression`")
    raw = json.loads(meta["config"])
    config = RegressionConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})
    net = RegressionNet(config)
    net.load_state_dict(load_file(str(path)), strict=True)
    return net.to(device).eval()


class RegressionStage:
    """The regression network, its optimiser and data (a :class:`training.loop.Stage`)."""

    name = "regression"

    def __init__(self, cfg: TrainConfig, device: torch.device, sampler: PairSampler, preview: tuple) -> None:
        self.cfg, self.sc, self.device, self.sampler = cfg, cfg.regression, device, sampler
        self.preview_hr, self.preview_lr = preview
        torch.manual_seed(cfg.run.seed + 2)
        self.net = RegressionNet(RegressionConfig.of(cfg)).to(device)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=self.sc.lr, betas=tuple(self.sc.betas))
        self.lr_factor = cosine_schedule(self.sc.steps, self.sc.warmup_steps, self.sc.min_lr_ratio)
        n = sum(p.numel() for p in self.net.parameters())
        LOG.info("regression: %d blocks x %d channels, %.0f k parameters, batch %d", self.sc.blocks,
                 self.sc.channels, n / 1e3, self.sc.batch_size)

    def state_dict(self) -> dict[str, Any]:
        return {"net": self.net.state_dict(), "opt": self.opt.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        self.opt.load_state_dict(state["opt"])

    def train_step(self, step: int) -> dict[str, float]:
        lr_now = self.sc.lr * self.lr_factor(step)
        set_lr(self.opt, lr_now)
        hr, lr = self.sampler.batch(step, self.sc.batch_size)
        base = torch.from_numpy(np.asarray(bicubic_upsample(lr.numpy(), self.cfg.model.scale), dtype=np.float32))
        self.net.train()
        loss = F.l1_loss(self.net(lr.to(self.device), base.to(self.device)), hr.to(self.device))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        logs = {"loss_l1": loss.item()}
        if self.sc.grad_clip:
            logs["grad_norm"] = float(nn.utils.clip_grad_norm_(self.net.parameters(), self.sc.grad_clip))
        self.opt.step()
        logs["lr"] = lr_now
        return logs

    def preview(self, step: int, path: Path) -> dict[str, float]:
        self.net.eval()
        hr, lr = self.preview_hr.numpy(), self.preview_lr.numpy()
        sr = self.net.predict(lr)
        bicubic = bicubic_upsample(lr, self.cfg.model.scale)
        save_grid(path, {"LR": lr, "bicubic": bicubic, "regression": sr, "HR": hr, "|err|": np.abs(sr - hr)},
                  title=f"regression step {step}")
        return {"val_regression_psnr": psnr(sr, hr), "val_bicubic_psnr": psnr(bicubic, hr)}

    def finish(self, stage_dir: Path, summary: dict[str, Any]) -> None:
        """Write ``regression.safetensors`` (what ``training evaluate`` reads)."""
        self.net.eval()
        summary["parameters"] = sum(p.numel() for p in self.net.parameters())
        save_regression(self.net, stage_dir / REGRESSION_FILE,
                        {"training_config": self.cfg.name, "steps": summary["steps"], "loss": "L1"})
        LOG.info("regression: wrote %s", stage_dir / REGRESSION_FILE)


def train_regression(cfg: TrainConfig, run_dir: Path, *, resume: bool = False, stop_at: int | None = None,
                     progress: bool = True) -> dict[str, Any]:
    """Train the regression baseline into ``run_dir/regression`` (``cfg.regression.steps`` steps in all)."""
    stage_dir = Path(run_dir) / "regression"
    return run_stage(cfg, stage_dir, lambda *parts: RegressionStage(cfg, *parts), cfg.regression.steps,
                     resume=resume, stop_at=stop_at, progress=progress)
