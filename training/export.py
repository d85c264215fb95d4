"""Export a trained run as a model folder that ``xr_opensr.load_model(folder)`` reads as is.

* :func:`export_model` (``python -m training export``): the diffusion model. The folder holds
  ``config.json`` (the run's :class:`ModelConfig`, with provenance), ``model.safetensors`` (the
  standardised autoencoder of stage 1 + the EMA UNet of stage 2) and ``MODEL_CARD.md`` (data,
  degradation, losses, steps, wall time, hardware, metrics, commands).
* :func:`export_v2` (``python -m training export --config training/configs/v2.json --base-model
  default``): model v2, the autoencoder and the denoiser of ``--base-model`` (a registered name or a
  model folder; the networks are not retrained) with the mean network of ``<run>/regression``
  (``python -m training regression``): its mean and uncertainty come from the mean network, its
  samples take their detail from the diffusion model (:mod:`xr_opensr.models.v2`).
  ``std_scale`` is then fitted by :func:`training.evaluate.calibrate_v2` on a mix of validation
  domains (synthetic validation scenes through the default sensor and through the training's
  randomised sensor); the unseen-domain set is never used.

The cards come from :mod:`training.card`.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from xr_opensr.errors import ModelError
from xr_opensr.models import SRModel, save_model
from xr_opensr.models.v2 import MeanSpreadModel

from .autoencoder import AE_WEIGHTS
from .card import (
    METRICS_FILE,
    card_sections,
    model_card,
    model_card_v2,
    read_commands,
    stage_config,
    stage_summary,
)
from .config import TrainConfig
from .diffusion import load_autoencoder
from .loop import CHECKPOINT, LOG, load_checkpoint

__all__ = ["INFERENCE_FIELDS", "export_model", "export_v2"]

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
    ae_summary, dm_summary = stage_summary(run_dir, "autoencoder"), stage_summary(run_dir, "diffusion")
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


def export_v2(cfg: TrainConfig, run_dir: Path, out: Path, base: str, *, overwrite: bool = False) -> Path:
    """Write model v2 = the networks of model ``base`` + the mean network of ``run_dir/regression``."""
    import torch

    import xr_opensr

    from .regression import load_regression, mean_net_file

    base_net = xr_opensr.load_model(base, device="cpu")
    if not isinstance(base_net, SRModel):
        raise ModelError(f"--base-model {base!r} is no diffusion model alone (kind 'ldm'; it may already have a "
                         "mean network); give a model v1 (e.g. the default 0.1.0 folder) whose diffusion networks "
                         "v2 should use")
    reg = load_regression(mean_net_file(run_dir))
    bc = base_net.config
    if reg.bands != tuple(bc.bands) or reg.scale != bc.scale or not torch.equal(
            reg.gain.flatten(), torch.tensor(bc.input_gain, dtype=torch.float32)):
        raise ModelError(f"the mean network ({reg.bands}, x{reg.scale}) and the base model ({bc.bands}, x{bc.scale}) "
                         "differ in bands, scale or normalisation: train the regression stage with the base model's "
                         "model section")
    stage = stage_summary(run_dir, "regression")
    provenance = {**bc.provenance, "base_model": f"{bc.name} {bc.version}", "mean_net_steps": stage.get("steps"),
                  "mean_net_loss": "L1 (mean) + Laplace NLL (spread head, detached)", "training_config": cfg.name}
    spread = stage_summary(run_dir, "spread")
    if spread:
        provenance["spread_head_steps"] = spread.get("steps")
    config = bc.replace(name=cfg.model.name, version=cfg.model.version, mean_net=reg.config, std_scale=1.0,
                        provenance=provenance)
    net = MeanSpreadModel(config)
    net.diffusion.load_state_dict(base_net.state_dict(), strict=True)
    net.mean_net.load_state_dict(reg.state_dict(), strict=True)
    from xr_opensr.models.io import WEIGHTS_FILE
    from xr_opensr.models.registry import resolve

    source = resolve(base)
    save_model(net, out, card=model_card_v2(cfg, run_dir, card_sections(source), 1.0, None), overwrite=overwrite)
    if source.is_dir():  # the same tensors: keep the base's file byte for byte (git stores it once)
        shutil.copyfile(source / WEIGHTS_FILE, Path(out) / WEIGHTS_FILE)
    (Path(out) / METRICS_FILE).unlink(missing_ok=True)
    LOG.info("export: wrote model v2 %s (diffusion networks of %s %s)", out, bc.name, bc.version)
    return Path(out)
