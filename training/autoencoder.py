"""Stage 1: train the KL autoencoder of the latent diffusion model on HR patches.

Loss (per step, as in taming-transformers' ``LPIPSWithDiscriminator`` used by LDM):

    nll   = l1_weight * |x - x_rec| + perceptual_weight * LPIPS(x, x_rec)
    loss  = nll + kl_weight * KL + histogram_weight * D_hist(x_rec, x)
            + [step >= disc_start] * disc_weight * lambda_adaptive * hinge_G(D(x_rec))
    lambda_adaptive = ||grad_last nll|| / (||grad_last hinge_G|| + 1e-4)     (last decoder conv)

then one hinge step of the PatchGAN discriminator on (x, x_rec). After training the latent is
standardised (per-channel mean 0, std 1 over training patches) by folding the affine map into
``quant_conv`` / ``post_quant_conv``: the decoder's output is unchanged, and the diffusion model
(which has no latent scale factor) sees unit-scale latents.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from xr_opensr.metrics import psnr
from xr_opensr.models import SRModel
from xr_opensr.models.autoencoder import AutoencoderKL

from .config import TrainConfig
from .loop import (
    LOG,
    Checkpointed,
    PairSampler,
    cosine_schedule,
    run_stage,
    save_grid,
    set_lr,
    step_generator,
)
from .losses import (
    NLayerDiscriminator,
    adaptive_weight,
    build_perceptual,
    hinge_d_loss,
    hinge_g_loss,
    histogram_loss,
    kl_loss,
)

__all__ = ["AE_WEIGHTS", "AutoencoderStage", "fold_latent_standardisation", "train_autoencoder"]

AE_WEIGHTS = "autoencoder.safetensors"
LATENT_STATS = "latent_stats.json"


class AutoencoderStage(Checkpointed):
    """Holds the autoencoder, discriminator, perceptual net, optimisers and data of stage 1."""

    name = "autoencoder"

    def __init__(self, cfg: TrainConfig, device: torch.device, sampler: PairSampler, preview: tuple) -> None:
        self.cfg = cfg
        self.sc = sc = cfg.autoencoder
        self.device = device
        self.sampler = sampler
        self.preview_hr, self.preview_lr = preview
        torch.manual_seed(cfg.run.seed)
        self.net = SRModel(cfg.model)  # for normalize/denormalize; only .autoencoder is trained
        self.net.denoiser = nn.Identity()  # not trained here: do not carry it around
        self.ae: AutoencoderKL = self.net.autoencoder.to(device).train()
        self.disc = NLayerDiscriminator(len(cfg.model.bands), sc.disc_channels, sc.disc_layers).to(device).train()
        self.perceptual = build_perceptual(
            sc.perceptual_net, reflectance_max=sc.perceptual_reflectance_max, nir=sc.perceptual_nir
        )
        if self.perceptual is not None:
            self.perceptual.to(device)
        LOG.info("autoencoder: perceptual loss = %s (%s)", sc.perceptual_net,
                 "weight 0" if not sc.perceptual_weight else f"weight {sc.perceptual_weight}")
        self.opt = torch.optim.Adam(self.ae.parameters(), lr=sc.lr, betas=tuple(sc.betas))
        self.opt_d = torch.optim.Adam(self.disc.parameters(), lr=sc.disc_lr, betas=tuple(sc.betas))
        self.lr_factor = cosine_schedule(sc.steps, sc.warmup_steps, sc.min_lr_ratio)
        n_ae = sum(p.numel() for p in self.ae.parameters())
        n_d = sum(p.numel() for p in self.disc.parameters())
        LOG.info("autoencoder: %.2fM parameters, discriminator %.2fM, HR patches %d px, batch %d",
                 n_ae / 1e6, n_d / 1e6, cfg.hr_patch, sc.batch_size)

    # ------------------------------------------------------------------ state
    CHECKPOINTED = {"autoencoder": "ae", "discriminator": "disc", "opt": "opt", "opt_d": "opt_d"}

    # ------------------------------------------------------------------ training
    def losses(self, x: torch.Tensor, hr: torch.Tensor, step: int,
               gen: torch.Generator) -> tuple[torch.Tensor, dict[str, float], torch.Tensor]:
        """Generator-side loss for normalised HR ``x`` (and its reflectance ``hr``): (loss, logs, reconstruction)."""
        sc = self.sc
        posterior = self.ae.encode(x)
        z = posterior.sample(gen) if sc.sample_posterior else posterior.mode()
        rec = self.ae.decode(z)
        l1 = (rec - x).abs().mean()
        nll = sc.l1_weight * l1
        logs = {"l1": l1.item()}
        if self.perceptual is not None and sc.perceptual_weight:
            p = self.perceptual(self.net.denormalize(rec), hr).mean()
            nll = nll + sc.perceptual_weight * p
            logs["lpips"] = p.item()
        kl = kl_loss(posterior, x[0].numel())
        hist = histogram_loss(rec, x, sc.histogram_bins, sc.histogram_bandwidth, sc.histogram_divergence)
        loss = nll + sc.kl_weight * kl + sc.histogram_weight * hist
        logs.update(kl=kl.item(), hist=hist.item())
        if self.disc_active(step):
            for p in self.disc.parameters():
                p.requires_grad_(False)
            g = hinge_g_loss(self.disc(rec))
            for p in self.disc.parameters():
                p.requires_grad_(True)
            d_weight = adaptive_weight(nll, g, self.ae.decoder.conv_out.weight, sc.adaptive_weight_max)
            loss = loss + sc.disc_weight * d_weight * g
            logs.update(g_loss=g.item(), d_weight=d_weight.item())
        logs["loss"] = loss.item()
        return loss, logs, rec.detach()

    def disc_active(self, step: int) -> bool:
        return self.sc.disc_weight > 0 and step >= self.sc.disc_start

    def train_step(self, step: int) -> dict[str, float]:
        gen = step_generator(self.cfg.run.seed, self.name, step)
        hr, _ = self.sampler.batch(step, self.sc.batch_size)
        hr = hr.to(self.device)
        factor = self.lr_factor(step)
        set_lr(self.opt, self.sc.lr * factor)
        set_lr(self.opt_d, self.sc.disc_lr * factor)
        x = self.net.normalize(hr)
        loss, logs, rec = self.losses(x, hr, step, gen)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.sc.grad_clip:
            logs["grad_norm"] = float(nn.utils.clip_grad_norm_(self.ae.parameters(), self.sc.grad_clip))
        self.opt.step()
        if self.disc_active(step):
            d_loss = hinge_d_loss(self.disc(x), self.disc(rec))
            self.opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            self.opt_d.step()
            logs["d_loss"] = d_loss.item()
        logs["lr"] = self.sc.lr * factor
        return logs

    # ------------------------------------------------------------------ outputs
    @torch.no_grad()
    def reconstruct(self, hr: torch.Tensor) -> torch.Tensor:
        """Round trip HR reflectance -> posterior mean -> decoder -> reflectance (eval mode)."""
        self.ae.eval()
        try:
            x = self.net.normalize(hr.to(self.device))
            return self.net.denormalize(self.ae.decode(self.ae.encode(x).mode())).cpu()
        finally:
            self.ae.train()

    def preview(self, step: int, path: Path) -> dict[str, float]:
        hr = self.preview_hr
        rec = self.reconstruct(hr)
        save_grid(path, {"LR": self.preview_lr.numpy(), "HR": hr.numpy(), "AE(HR)": rec.numpy(),
                         "|err|": (rec - hr).abs().numpy()}, title=f"autoencoder step {step}")
        return {"val_ae_psnr": psnr(rec.numpy(), hr.numpy())}

    def finish(self, stage_dir: Path, summary: dict[str, Any]) -> None:
        """Standardise the latent, write ``autoencoder.safetensors`` and the latent statistics."""
        from safetensors.torch import save_file

        self.ae.eval()
        mean, std = latent_statistics(self.net, self.sampler, self.sc.latent_stat_batches, self.sc.batch_size,
                                      self.device, target="mode")
        LOG.info("autoencoder: latent mean %s std %s -> standardised", np.round(mean.tolist(), 3),
                 np.round(std.tolist(), 3))
        ae = fold_latent_standardisation(self.ae, mean, std)
        state = {k: v.detach().cpu().float().contiguous() for k, v in ae.state_dict().items()}
        save_file(state, str(stage_dir / AE_WEIGHTS))
        summary["val_ae_psnr"] = psnr(self.reconstruct(self.preview_hr).numpy(), self.preview_hr.numpy())
        summary["latent_mean"] = mean.tolist()
        summary["latent_std"] = std.tolist()
        summary["perceptual_net"] = self.sc.perceptual_net
        (stage_dir / LATENT_STATS).write_text(json.dumps({"mean": mean.tolist(), "std": std.tolist()}) + "\n")


def train_autoencoder(cfg: TrainConfig, run_dir: Path, *, resume: bool = False, stop_at: int | None = None,
                      progress: bool = True) -> dict[str, Any]:
    """Run stage 1 into ``run_dir/autoencoder`` (``cfg.autoencoder.steps`` steps in all)."""
    stage_dir = Path(run_dir) / "autoencoder"
    return run_stage(cfg, stage_dir, lambda *parts: AutoencoderStage(cfg, *parts), cfg.autoencoder.steps,
                     resume=resume, stop_at=stop_at, progress=progress)


@torch.no_grad()
def latent_statistics(
    net: SRModel, sampler: PairSampler, batches: int, batch_size: int, device: torch.device, target: str = "mode"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of the HR latents over ``batches`` training batches (fixed steps)."""
    zs = []
    for i in range(batches):
        hr, _ = sampler.batch(10_000_000 + i, batch_size)  # steps no run reaches: fixed, reproducible
        post = net.autoencoder.encode(net.normalize(hr.to(device)))
        z = post.mode() if target == "mode" else post.sample(step_generator(0, "latent_stats", i))
        zs.append(z.transpose(0, 1).reshape(z.shape[1], -1).cpu())
    allz = torch.cat(zs, dim=1).double()
    return allz.mean(dim=1).float(), allz.std(dim=1).clamp_min(1e-6).float()


@torch.no_grad()
def fold_latent_standardisation(ae: AutoencoderKL, mean: torch.Tensor, std: torch.Tensor) -> AutoencoderKL:
    """Make the posterior over z' = (z - mean) / std, leaving decode(encode(x)) unchanged.

    ``quant_conv`` emits [mean | logvar]: mean rows become (W z - m) / s, logvar biases shift by
    -2 log s; ``post_quant_conv`` takes z = s z' + m: its weight columns scale by s, its bias adds W m.
    """
    e = ae.config.embed_dim
    m = mean.to(ae.quant_conv.weight)
    s = std.to(ae.quant_conv.weight)
    qw, qb = ae.quant_conv.weight, ae.quant_conv.bias  # (2e, 2zc, 1, 1), (2e,)
    qw[:e] /= s[:, None, None, None]
    qb[:e] = (qb[:e] - m) / s
    qb[e:] -= 2.0 * torch.log(s)
    pw, pb = ae.post_quant_conv.weight, ae.post_quant_conv.bias  # (zc, e, 1, 1), (zc,)
    pb += (pw[:, :, 0, 0] * m[None, :]).sum(dim=1)
    pw *= s[None, :, None, None]
    return ae
