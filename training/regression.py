"""Stage "regression": the mean network (and its spread head), trained on the same pairs.

The network (:class:`xr_opensr.models.regression.RegressionNet`, EDSR-like, residual on bicubic) is
both the deterministic baseline of ``training evaluate`` (what a plain regression net gives with the
same data and budget: the distortion-perception trade-off) and the mean of model v2, whose
``export`` puts it beside the diffusion model. Loss: L1 on reflectance for the mean, plus the
Laplace negative log-likelihood of the (detached) error for the spread head on detached features,
so the spread never changes the mean. Training runs in :func:`training.loop.run_stage`
(checkpoints, ``--resume``, metrics.csv, previews): Adam, linear warm-up then cosine decay,
gradient clipping (mean and head apart). At the end the weights and their config are written to
``<run>/regression/regression.safetensors`` (the config as JSON in the safetensors metadata), which
``training evaluate`` and ``training export --base-model`` read with :func:`load_regression`.
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

from xr_opensr.errors import ModelError
from xr_opensr.metrics import psnr
from xr_opensr.models.config import load_config
from xr_opensr.models.regression import MeanNetConfig, RegressionNet, laplace_nll
from xr_opensr.sensor import bicubic_upsample

from .config import TrainConfig
from .loop import LOG, Checkpointed, PairSampler, cosine_schedule, run_stage, save_grid, set_lr

__all__ = ["REGRESSION_FILE", "RegressionConfig", "RegressionNet", "RegressionStage", "SpreadStage", "load_regression",
           "mean_net_file", "train_regression", "train_spread"]

REGRESSION_FILE = "regression.safetensors"
_FORMAT = "xr-opensr regression baseline 2"


@dataclass(frozen=True)
class RegressionConfig:
    """The network of a ``regression.safetensors`` file: the model's bands, scale and normalisation
    and the architecture (:class:`~xr_opensr.models.regression.MeanNetConfig`)."""

    bands: tuple[str, ...] = ("B04", "B03", "B02", "B08")
    scale: int = 4
    input_gain: tuple[float, ...] = (4.0, 4.0, 4.0, 4.0)
    input_offset: tuple[float, ...] = (-1.0, -1.0, -1.0, -1.0)
    net: MeanNetConfig = MeanNetConfig()

    @classmethod
    def of(cls, cfg: TrainConfig) -> RegressionConfig:
        """The architecture of a training config: its ``regression`` section and the model's bands/scale/normalisation."""
        m, r = cfg.model, cfg.regression
        # the regression section carries every MeanNetConfig field under the same name
        net = MeanNetConfig(**{f.name: getattr(r, f.name) for f in dataclasses.fields(MeanNetConfig)})
        return cls(bands=tuple(m.bands), scale=m.scale, input_gain=tuple(m.input_gain),
                   input_offset=tuple(m.input_offset), net=net)

    def build(self) -> RegressionNet:
        return RegressionNet(self.net, self.bands, self.scale, self.input_gain, self.input_offset)


def save_regression(net: RegressionNet, path: Path, provenance: dict[str, Any] | None = None) -> Path:
    """Write the weights and (as metadata) the config and provenance to one safetensors file."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().float().contiguous() for k, v in net.state_dict().items()}
    config = RegressionConfig(bands=net.bands, scale=net.scale, input_gain=tuple(net.gain.flatten().tolist()),
                              input_offset=tuple(net.offset.flatten().tolist()), net=net.config)
    meta = {"format": _FORMAT, "config": json.dumps(dataclasses.asdict(config)),
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
    config = load_config(RegressionConfig, json.loads(meta["config"]), f"regression config of {path}")
    net = config.build()
    net.load_state_dict(load_file(str(path)), strict=True)
    return net.to(device).eval()


def _step_batch(stage, step: int, lr_now: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Set the stage's learning rate and give batch ``step``: (HR, LR, bicubic of LR) on its device."""
    set_lr(stage.opt, lr_now)
    hr, lr = stage.sampler.batch(step, stage.sc.batch_size)
    base = torch.from_numpy(np.asarray(bicubic_upsample(lr.numpy(), stage.cfg.model.scale), dtype=np.float32))
    return hr.to(stage.device), lr.to(stage.device), base.to(stage.device)


class RegressionStage(Checkpointed):
    """The regression network, its optimiser and data (a :class:`training.loop.Stage`)."""

    name = "regression"

    def __init__(self, cfg: TrainConfig, device: torch.device, sampler: PairSampler, preview: tuple) -> None:
        self.cfg, self.sc, self.device, self.sampler = cfg, cfg.regression, device, sampler
        self.preview_hr, self.preview_lr = preview
        torch.manual_seed(cfg.run.seed + 2)
        self.net = RegressionConfig.of(cfg).build().to(device)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=self.sc.lr, betas=tuple(self.sc.betas))
        self.lr_factor = cosine_schedule(self.sc.steps, self.sc.warmup_steps, self.sc.min_lr_ratio)
        n = sum(p.numel() for p in self.net.parameters())
        LOG.info("regression: %d blocks x %d channels, %.0f k parameters, batch %d", self.sc.blocks,
                 self.sc.channels, n / 1e3, self.sc.batch_size)

    CHECKPOINTED = {"net": "net", "opt": "opt"}

    def train_step(self, step: int) -> dict[str, float]:
        lr_now = self.sc.lr * self.lr_factor(step)
        hr, lr, base = _step_batch(self, step, lr_now)
        self.net.train()
        mean, scale = self.net.mean_and_scale(lr, base)
        loss = F.l1_loss(mean, hr)
        logs = {"loss_l1": loss.item()}
        if scale is not None:  # the spread head sees detached features and a detached mean
            nll = laplace_nll(hr - mean.detach(), scale)
            logs["loss_nll"] = nll.item()
            loss = loss + nll
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.sc.grad_clip:  # clipped apart: the head's gradients must not shrink the mean's
            spread = set(self.net.spread.parameters()) if self.net.has_spread else set()
            main = [p for p in self.net.parameters() if p not in spread]
            logs["grad_norm"] = float(nn.utils.clip_grad_norm_(main, self.sc.grad_clip))
            if spread:
                nn.utils.clip_grad_norm_(list(spread), self.sc.grad_clip)
        self.opt.step()
        logs["lr"] = lr_now
        return logs

    def preview(self, step: int, path: Path) -> dict[str, float]:
        self.net.eval()
        hr, lr = self.preview_hr.numpy(), self.preview_lr.numpy()
        sr, _ = self.net.predict(lr)
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


class SpreadStage(Checkpointed):
    """Stage "spread": the spread head of ``cfg.regression`` (depth, channels, detail inputs) fitted
    alone on a trained mean network, whose weights stay frozen (so the mean and the regression
    baseline are unchanged): Laplace NLL of the error of the mean, Adam ``spread_lr``, warm-up then
    cosine, on the same training pairs."""

    name = "spread"
    CHECKPOINTED = {"head": "head", "opt": "opt"}

    def __init__(self, cfg: TrainConfig, device: torch.device, sampler: PairSampler, preview: tuple,
                 source: Path) -> None:
        self.cfg, self.sc, self.device, self.sampler = cfg, cfg.regression, device, sampler
        self.preview_hr, self.preview_lr = preview
        if not self.sc.uncertainty_channels:
            raise ModelError("the spread stage needs regression.uncertainty_channels > 0")
        torch.manual_seed(cfg.run.seed + 3)
        self.net = RegressionConfig.of(cfg).build().to(device)
        base = load_regression(source, device)
        mean_part = ("channels", "blocks", "res_scale")
        theirs = (base.bands, base.scale, *(getattr(base.config, k) for k in mean_part))
        ours = (self.net.bands, self.net.scale, *(getattr(self.net.config, k) for k in mean_part))
        if theirs != ours or not torch.equal(base.gain.cpu(), self.net.gain.cpu()):
            raise ModelError(f"{source} has bands, scale, channels, blocks, res_scale {theirs}, the config {ours} (or "
                             "another normalisation): give the config the mean network was trained with")
        mean_state = {k: v for k, v in base.state_dict().items() if not k.startswith("spread.")}
        missing = [k for k in self.net.load_state_dict(mean_state, strict=False).missing_keys
                   if not k.startswith("spread.")]
        if missing:
            raise ModelError(f"{source} lacks {missing}")
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.head = self.net.spread
        for p in self.head.parameters():
            p.requires_grad_(True)
        self.opt = torch.optim.Adam(self.head.parameters(), lr=self.sc.spread_lr)
        self.lr_factor = cosine_schedule(self.sc.spread_steps, self.sc.warmup_steps, self.sc.min_lr_ratio)
        LOG.info("spread: head of depth %d x %d channels%s, %.0f k parameters, on the frozen mean of %s",
                 self.sc.uncertainty_depth, self.sc.uncertainty_channels,
                 " + detail inputs" if self.sc.uncertainty_detail else "",
                 sum(p.numel() for p in self.head.parameters()) / 1e3, source)

    def train_step(self, step: int) -> dict[str, float]:
        lr_now = self.sc.spread_lr * self.lr_factor(step)
        hr, lr, base = _step_batch(self, step, lr_now)
        self.net.eval()
        self.head.train()
        mean, scale = self.net.mean_and_scale(lr, base)
        nll = laplace_nll(hr - mean.detach(), scale)
        self.opt.zero_grad(set_to_none=True)
        nll.backward()
        if self.sc.grad_clip:
            nn.utils.clip_grad_norm_(self.head.parameters(), self.sc.grad_clip)
        self.opt.step()
        return {"loss_nll": nll.item(), "lr": lr_now}

    def preview(self, step: int, path: Path) -> dict[str, float]:
        from xr_opensr.metrics import gradient_magnitude, uncertainty_calibration

        self.net.eval()
        hr, lr = self.preview_hr.numpy(), self.preview_lr.numpy()
        sr, std = self.net.predict(lr)
        save_grid(path, {"LR": lr, "regression": sr, "HR": hr, "|err|": np.abs(sr - hr), "std": std},
                  title=f"spread step {step}")
        gradient = gradient_magnitude(bicubic_upsample(lr, self.cfg.model.scale))
        return {"val_spearman_std": uncertainty_calibration(std, sr - hr)["spearman"],
                "val_spearman_gradient": uncertainty_calibration(gradient, sr - hr)["spearman"]}

    def finish(self, stage_dir: Path, summary: dict[str, Any]) -> None:
        """Write ``<run>/spread/regression.safetensors``: the mean network with the refitted head."""
        self.net.eval()
        summary["head_parameters"] = sum(p.numel() for p in self.head.parameters())
        save_regression(self.net, stage_dir / REGRESSION_FILE,
                        {"training_config": self.cfg.name, "steps": summary["steps"],
                         "loss": "L1 (mean, stage regression) + Laplace NLL (head, stage spread)"})
        LOG.info("spread: wrote %s", stage_dir / REGRESSION_FILE)


def mean_net_file(run_dir: Path) -> Path:
    """The mean network of a run: ``<run>/spread/regression.safetensors`` (the refitted head) when the
    spread stage has finished, else ``<run>/regression/regression.safetensors``."""
    refitted = Path(run_dir) / "spread" / REGRESSION_FILE
    return refitted if refitted.is_file() else Path(run_dir) / "regression" / REGRESSION_FILE


def train_spread(cfg: TrainConfig, run_dir: Path, *, resume: bool = False, stop_at: int | None = None,
                 progress: bool = True) -> dict[str, Any]:
    """Refit the spread head on ``run_dir/regression`` into ``run_dir/spread`` (``regression.spread_steps``)."""
    source = Path(run_dir) / "regression" / REGRESSION_FILE
    if not source.is_file():
        raise FileNotFoundError(f"no mean network at {source}: run `python -m training regression` (same --out) first")
    return run_stage(cfg, Path(run_dir) / "spread", lambda *parts: SpreadStage(cfg, *parts, source=source),
                     cfg.regression.spread_steps, resume=resume, stop_at=stop_at, progress=progress)


def train_regression(cfg: TrainConfig, run_dir: Path, *, resume: bool = False, stop_at: int | None = None,
                     progress: bool = True) -> dict[str, Any]:
    """Train the regression baseline into ``run_dir/regression`` (``cfg.regression.steps`` steps in all)."""
    stage_dir = Path(run_dir) / "regression"
    return run_stage(cfg, stage_dir, lambda *parts: RegressionStage(cfg, *parts), cfg.regression.steps,
                     resume=resume, stop_at=stop_at, progress=progress)
