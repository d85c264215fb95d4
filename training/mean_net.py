"""Model v2: attach a trained mean network to a diffusion model, calibrate its spread, write the card.

``python -m training export --config training/configs/v2.json --base-model default`` takes the
autoencoder and the denoiser of ``--base-model`` (a registered name or a model folder; the networks
are not retrained) and the mean network of ``<run>/regression`` (``python -m training regression``),
and writes a model whose mean and uncertainty come from the mean network and whose samples take their
detail from the diffusion model (:mod:`xr_opensr.models.pipeline`). ``std_scale`` is then fitted by
:func:`calibrate_v2` on a mix of validation domains (synthetic validation scenes through the default
sensor and through the training's randomised sensor); the unseen-domain set is never used.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from xr_opensr.errors import ModelError
from xr_opensr.models import SRModel, save_model
from xr_opensr.models.io import CARD_FILE, CONFIG_FILE

from .config import TrainConfig
from .loop import LOG, SUMMARY

__all__ = ["export_v2", "calibrate_v2", "model_card_v2", "DIFFUSION_SECTION"]

#: the heading of the model card's section on the (unchanged) diffusion networks
DIFFUSION_SECTION = "## The diffusion networks (from the base model, not retrained)"


def export_v2(cfg: TrainConfig, run_dir: Path, out: Path, base: str, *, overwrite: bool = False) -> Path:
    """Write model v2 = the networks of model ``base`` + the mean network of ``run_dir/regression``."""
    import torch

    import xr_opensr

    from .regression import load_regression, mean_net_file

    base_net = xr_opensr.load_model(base, device="cpu")
    if base_net.is_v2:
        raise ModelError(f"--base-model {base!r} already has a mean network; give a model v1 (e.g. the default "
                         "0.1.0 folder) whose diffusion networks v2 should use")
    reg = load_regression(mean_net_file(run_dir))
    bc = base_net.config
    if reg.bands != tuple(bc.bands) or reg.scale != bc.scale or not torch.equal(
            reg.gain.flatten(), torch.tensor(bc.input_gain, dtype=torch.float32)):
        raise ModelError(f"the mean network ({reg.bands}, x{reg.scale}) and the base model ({bc.bands}, x{bc.scale}) "
                         "differ in bands, scale or normalisation: train the regression stage with the base model's "
                         "model section")
    stage = _stage_summary(run_dir)
    provenance = {**bc.provenance, "base_model": f"{bc.name} {bc.version}", "mean_net_steps": stage.get("steps"),
                  "mean_net_loss": "L1 (mean) + Laplace NLL (spread head, detached)", "training_config": cfg.name}
    spread = _spread_summary(run_dir)
    if spread:
        provenance["spread_head_steps"] = spread.get("steps")
    config = bc.replace(name=cfg.model.name, version=cfg.model.version, mean_net=reg.config, std_scale=1.0,
                        provenance=provenance)
    net = SRModel(config)
    state = {**base_net.state_dict(), **{f"mean_net.{k}": v for k, v in reg.state_dict().items()}}
    net.load_state_dict(state, strict=True)
    base_card = _base_card(base)
    save_model(net, out, card=model_card_v2(cfg, run_dir, base_card, 1.0, None), overwrite=overwrite)
    from xr_opensr.models.io import WEIGHTS_FILE, _resolve

    source = _resolve(base)
    if source.is_dir():  # the same tensors: keep the base's file byte for byte (git stores it once)
        shutil.copyfile(source / WEIGHTS_FILE, Path(out) / WEIGHTS_FILE)
    (Path(out) / "metrics.json").unlink(missing_ok=True)
    LOG.info("export: wrote model v2 %s (diffusion networks of %s %s)", out, bc.name, bc.version)
    return Path(out)


def calibrate_v2(cfg: TrainConfig, model_dir: Path, net: SRModel) -> float:
    """Fit ``std_scale`` of ``net`` (loaded from ``model_dir``) so that +-2 std covers
    ``evaluate.coverage_target`` of |mean - HR| on the validation mix; writes it into
    ``model_dir/config.json`` and returns it."""
    import torch

    from .data import synthetic_pairs as raw_pairs
    from .export import set_std_scale
    from .loop import PairSampler

    ev = cfg.evaluate
    ratios = []
    seeds = range(ev.validation_seed, ev.validation_seed + ev.validation_items)
    from .evaluate import fixed_sensor

    for degradation in (fixed_sensor(cfg).degradation_config(), cfg.degradation_config()):
        pairs = raw_pairs(cfg.data_config(), degradation, hr_size=cfg.hr_patch, seeds=seeds)
        hr, lr = PairSampler(pairs).items(list(range(len(pairs))))
        mean, unit = net.mean_and_spread(lr, torch.zeros(lr.shape[0], *lr.shape[-2:], dtype=torch.bool))
        ratios.append((np.abs(mean - hr.numpy()) / np.maximum(2.0 * unit, 1e-12)).ravel())
    scale = float(max(np.quantile(np.concatenate(ratios), ev.coverage_target), 1e-6))
    set_std_scale(model_dir, scale)
    LOG.info("calibrate: std_scale = %.4g (+-2 std covers %.1f %% of |mean - HR| on %d validation scenes x 2 sensors)",
             scale, 100 * ev.coverage_target, ev.validation_items)
    return scale


def _stage_summary(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / "regression" / SUMMARY
    return json.loads(path.read_text()) if path.is_file() else {}


def _spread_summary(run_dir: Path) -> dict[str, Any]:
    """The summary of the spread stage (``python -m training spread``), {} when it has not run."""
    path = Path(run_dir) / "spread" / SUMMARY
    return json.loads(path.read_text()) if path.is_file() else {}


def _spread_line(cfg: TrainConfig, run_dir: Path) -> str:
    """The card's sentence on the spread stage ("" when it has not run)."""
    s, r = _spread_summary(run_dir), cfg.regression
    if not s:
        return ""
    return (f" Then `python -m training spread`: the head alone refitted on the frozen mean, {r.spread_steps} steps, "
            f"Adam lr {r.spread_lr}, Laplace NLL ({s.get('wall_s', 0) / 60:.1f} min, {s.get('s_per_step', 0):.2f} s/step).")


def _base_card(base: str) -> str:
    """The Architecture, Data and Training sections of the base model's card."""
    from xr_opensr.models.io import _resolve

    text = (_resolve(base) / CARD_FILE).read_text()
    start = text.find("## Architecture")
    end = text.find("## Commands")
    return text[start:end].replace("## ", "### ") if start >= 0 else "(the base model has no card)"


def kept_base_card(folder: Path) -> str:
    """The diffusion section of an existing v2 card (kept when the card is rewritten after evaluation)."""
    text = (Path(folder) / CARD_FILE).read_text()
    start = text.find(DIFFUSION_SECTION)
    end = text.find("## Commands", start)
    return text[start + len(DIFFUSION_SECTION):end].strip("\n") if start >= 0 else ""


def model_card_v2(cfg: TrainConfig, run_dir: Path, base_card: str, std_scale: float,
                  metrics: dict[str, Any] | None) -> str:
    """Markdown card of model v2 (the mean network's training, the calibration, the metrics)."""
    from .export import _fmt, _resolved, read_commands

    r, s = cfg.regression, _stage_summary(run_dir)
    hw = s.get("hardware", {})
    where = hw.get("gpu") or f"{hw.get('cpu', '?')} ({hw.get('torch_threads', '?')} threads)"
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
        f"{hw.get('device', '?')}: {where}.",
        "- The real scene's part south of northing 4,169,000 m (EPSG:32618) is held out (evaluation only).",
        "",
        DIFFUSION_SECTION,
        "",
        base_card.strip("\n"),
        "",
        "## Commands",
        "```",
        *(read_commands(run_dir) or ["(not recorded)"]),
        "```",
        "",
        "## Metrics",
    ]
    if metrics:
        from .evaluate import metrics_table

        lines += ["", "| metric | value | goal |", "| --- | --- | --- |"]
        for key, value in metrics.get("summary", {}).items():
            lines.append(f"| {key} | {_fmt(value)} | {metrics.get('goals', {}).get(key, '')} |")
        lines += ["", f"Settings: {json.dumps(metrics.get('settings', {}))}. Full numbers: `metrics.json`.",
                  "", "### Every figure", "", metrics_table(metrics).rstrip("\n")]
    else:
        lines.append("Not evaluated yet: run `python -m training evaluate`.")
    return "\n".join(lines) + "\n"


def write_card_v2(folder: Path, cfg: TrainConfig, run_dir: Path, metrics: dict[str, Any] | None) -> None:
    from xr_opensr.models import ModelConfig

    std_scale = ModelConfig.from_json(Path(folder) / CONFIG_FILE).std_scale
    card = model_card_v2(cfg, run_dir, kept_base_card(folder), std_scale, metrics)
    (Path(folder) / CARD_FILE).write_text(card)
