"""Stage 2: train the denoising UNet on latents of the frozen autoencoder from stage 1.

Conditioning is exactly the engine's (``SRModel.encode_condition``): the normalised LR is upsampled
(bilinear) to the HR grid and encoded; its posterior is sampled (``model.conditioning == "sample"``)
or its mean used ("mode"), and concatenated to the noisy latent. Objective: eps-prediction,

    z0 = posterior of the normalised HR (mode or sample),  t ~ U{0..T-1},  eps ~ N(0, I)
    loss = || eps - UNet([sqrt(abar_t) z0 + sqrt(1 - abar_t) eps ; cond], t) ||^2

with AdamW, gradient clipping, an EMA of the UNet's weights (what is exported) and bf16 autocast on
a GPU. The encoder is deterministic, so the posteriors of a fixed pool of training pairs can be
computed once (``diffusion.cache_pairs``); sampling from them at each step is then the same as
encoding afresh, at a fraction of the cost on a CPU.
"""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from xr_opensr.metrics import bicubic_upsample, psnr
from xr_opensr.models import SRModel

from .autoencoder import AE_WEIGHTS
from .config import TrainConfig
from .loop import (
    EMA,
    LOG,
    Checkpointed,
    PairSampler,
    cosine_schedule,
    run_stage,
    save_grid,
    set_lr,
    step_generator,
)

__all__ = ["DiffusionStage", "load_autoencoder", "train_diffusion"]

_POOL_KEY = 20_000_000  # sampler steps used for the cached pool (never reached by a run)


def load_autoencoder(net: SRModel, path: Path) -> None:
    """Load stage 1's (standardised) autoencoder weights into ``net.autoencoder``, strictly."""
    from safetensors.torch import load_file

    if not path.is_file():
        raise FileNotFoundError(
            f"no trained autoencoder at {path}: run `python -m training autoencoder` first (same --out)"
        )
    net.autoencoder.load_state_dict(load_file(str(path)), strict=True)


class DiffusionStage(Checkpointed):
    """UNet + EMA + optimiser + (optionally) the cached latent posteriors of stage 2."""

    name = "diffusion"

    def __init__(self, cfg: TrainConfig, device: torch.device, sampler: PairSampler, preview: tuple,
                 ae_path: Path, cache_path: Path | None = None) -> None:
        self.cfg = cfg
        self.sc = sc = cfg.diffusion
        self.device = device
        self.sampler = sampler
        self.preview_hr, self.preview_lr = preview
        torch.manual_seed(cfg.run.seed + 1)
        self.net = SRModel(cfg.model)
        load_autoencoder(self.net, ae_path)
        self.net.to(device)
        self.ae = self.net.autoencoder.eval()
        for p in self.ae.parameters():
            p.requires_grad_(False)
        self.unet = self.net.denoiser.train()
        self.ema = EMA(self.unet, sc.ema_decay)
        self.opt = torch.optim.AdamW(self.unet.parameters(), lr=sc.lr, weight_decay=sc.weight_decay)
        self.lr_factor = cosine_schedule(sc.steps, sc.warmup_steps, sc.min_lr_ratio)
        self.autocast = sc.mixed_precision and device.type == "cuda"
        self.timesteps = cfg.model.schedule.timesteps
        n = sum(p.numel() for p in self.unet.parameters())
        LOG.info("diffusion: UNet %.2fM parameters, latents %d px, batch %d, conditioning %s, target %s, "
                 "mixed precision %s", n / 1e6, cfg.model.patch_size, sc.batch_size, cfg.model.conditioning,
                 sc.target, "bf16" if self.autocast else "off")
        self.cache: dict[str, torch.Tensor] | None = None
        if sc.cache_pairs > 0:
            self.cache = self._load_or_build_cache(cache_path)

    # ------------------------------------------------------------------ latents
    @torch.no_grad()
    def encode(self, hr: torch.Tensor, lr: torch.Tensor) -> dict[str, torch.Tensor]:
        """Posterior parameters of the HR latents and of the LR conditioning (engine's encode_condition)."""
        post = self.ae.encode(self.net.normalize(hr.to(self.device)))
        cond = self.net.encode_condition(self.net.normalize(lr.to(self.device)))
        return {"z_mean": post.mean, "z_std": post.std, "c_mean": cond.mean, "c_std": cond.std}

    def _load_or_build_cache(self, path: Path | None) -> dict[str, torch.Tensor]:
        n, bs = self.sc.cache_pairs, self.sc.batch_size
        key = {"pairs": n, "ae": _fingerprint(self.ae)}
        if path is not None and path.is_file():
            cached = torch.load(path, map_location="cpu", weights_only=True)
            if cached.get("key") == key:
                LOG.info("diffusion: latent cache read from %s (%d pairs)", path, n)
                return {k: v.to(self.device) for k, v in cached["latents"].items()}
        LOG.info("diffusion: encoding %d training pairs once (latent cache)", n)
        parts: dict[str, list[torch.Tensor]] = {}
        for i in range((n + bs - 1) // bs):
            hr, lr = self.sampler.batch(_POOL_KEY + i, bs)
            for k, v in self.encode(hr, lr).items():
                parts.setdefault(k, []).append(v.cpu())
        latents = {k: torch.cat(v)[:n].contiguous() for k, v in parts.items()}
        if path is not None:
            torch.save({"key": key, "latents": latents}, path)
        return {k: v.to(self.device) for k, v in latents.items()}

    def batch_latents(self, step: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
        if self.cache is not None:
            n = self.cache["z_mean"].shape[0]
            idx = torch.randint(0, n, (self.sc.batch_size,), generator=gen).to(self.device)
            return {k: v[idx] for k, v in self.cache.items()}
        hr, lr = self.sampler.batch(step, self.sc.batch_size)
        return self.encode(hr, lr)

    # ------------------------------------------------------------------ state
    CHECKPOINTED = {"unet": "unet", "ema": "ema", "opt": "opt"}

    # ------------------------------------------------------------------ training
    def loss(self, lat: dict[str, torch.Tensor], gen: torch.Generator) -> torch.Tensor:
        b = lat["z_mean"].shape[0]
        shape = lat["z_mean"].shape

        def randn() -> torch.Tensor:
            return torch.randn(shape, generator=gen).to(self.device)

        z0 = lat["z_mean"] if self.sc.target == "mode" else lat["z_mean"] + lat["z_std"] * randn()
        cond = lat["c_mean"] + lat["c_std"] * randn() if self.cfg.model.conditioning == "sample" else lat["c_mean"]
        t = torch.randint(0, self.timesteps, (b,), generator=gen).to(self.device)
        noise = randn()
        x_t = self.net.schedule.q_sample(z0, t, noise)
        ctx = torch.autocast("cuda", dtype=torch.bfloat16) if self.autocast else contextlib.nullcontext()
        with ctx:
            eps = self.net.denoise(x_t, t, cond)
        return F.mse_loss(eps.float(), noise)

    def train_step(self, step: int) -> dict[str, float]:
        gen = step_generator(self.cfg.run.seed, self.name, step)
        lr = self.sc.lr * self.lr_factor(step)
        set_lr(self.opt, lr)
        loss = self.loss(self.batch_latents(step, gen), gen)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        logs = {"loss": loss.item()}
        if self.sc.grad_clip:
            logs["grad_norm"] = float(nn.utils.clip_grad_norm_(self.unet.parameters(), self.sc.grad_clip))
        self.opt.step()
        self.ema.update(self.unet)
        logs["lr"] = lr
        return logs

    # ------------------------------------------------------------------ outputs
    def ema_model(self) -> SRModel:
        """A copy of the model with the EMA weights in the UNet (eval mode)."""
        net = copy.deepcopy(self.net).eval()
        self.ema.copy_to(net.denoiser)
        return net

    def preview(self, step: int, path: Path) -> dict[str, float]:
        sc = self.sc
        net = self.ema_model()
        hr, lr = self.preview_hr, self.preview_lr
        out = net.sample(lr, samples=sc.preview_samples, steps=sc.preview_steps, eta=sc.preview_eta, seed=0)
        mean, std = (a.numpy() for a in net.summarize(out))
        hr, lr = hr.numpy(), lr.numpy()
        save_grid(path, {"LR": lr, "SR mean": mean, "SR sample": out[:, 0].numpy(), "HR": hr,
                         "std (raw)": std, "|err|": np.abs(mean - hr)},
                  title=f"diffusion step {step} (EMA, {sc.preview_samples} samples, {sc.preview_steps} DDIM steps)")
        return {"val_sr_psnr": psnr(mean, hr), "val_bicubic_psnr": psnr(bicubic_upsample(lr, self.cfg.model.scale), hr)}

    def finish(self, stage_dir: Path, summary: dict[str, Any]) -> None:
        summary["ema_decay"] = self.sc.ema_decay


def train_diffusion(cfg: TrainConfig, run_dir: Path, *, resume: bool = False, stop_at: int | None = None,
                    progress: bool = True) -> dict[str, Any]:
    """Run stage 2 into ``run_dir/diffusion`` on the autoencoder in ``run_dir/autoencoder``."""
    run_dir = Path(run_dir)
    stage_dir = run_dir / "diffusion"
    ae_weights = run_dir / "autoencoder" / AE_WEIGHTS

    def make(*parts: Any) -> DiffusionStage:
        return DiffusionStage(cfg, *parts, ae_weights, cache_path=stage_dir / "latent_cache.pt")

    return run_stage(cfg, stage_dir, make, cfg.diffusion.steps, resume=resume, stop_at=stop_at, progress=progress)


def _fingerprint(module: nn.Module) -> str:
    import hashlib

    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().float().numpy().tobytes())
    return h.hexdigest()[:16]
