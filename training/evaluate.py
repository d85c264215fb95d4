"""Calibrate the uncertainty on validation scenes, then score the model on held-out data vs bicubic.

1. ``calibrate``: sample the *validation* synthetic scenes (seeds ``evaluate.validation_seed + i``,
   used by neither training nor the test), and set ``std_scale`` so that ``|SR mean - HR| <= 2 *
   std_scale * std`` for ``evaluate.coverage_target`` of the pixels; written into the model's
   ``config.json``.
2. ``evaluate``: on held-out synthetic scenes (seeds ``evaluate.test_seed + i``) and on crops of the
   real scene's held-out part (south of the line, Wald's protocol: the LR is the degraded 10 m
   image, the 10 m image is the reference), compare the SR mean with bicubic: PSNR, SSIM, LPIPS,
   spectral angle; uncertainty coverage and Spearman(std, |error|) beside the trivial baseline
   Spearman(gradient magnitude of bicubic, |error|); spectral consistency (SR degraded back to
   10 m vs LR); the autoencoder's round trip of the HR. Writes ``metrics.json`` into the model
   folder and the numbers into its model card.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import TrainConfig
from .export import METRICS_FILE, set_std_scale, write_card
from .loop import LOG, heldout_pairs, save_grid, setup_runtime, synthetic_pairs

__all__ = ["GOALS", "calibrate", "evaluate", "fit_std_scale", "score"]

GOALS = {
    "synthetic_psnr_gain_db": ">= +0.5 dB",
    "synthetic_coverage_2std": "0.85 - 0.99",
    "synthetic_spearman_std_err": ">= 0.3 (and above the gradient baseline)",
    "synthetic_consistency_db": ">= 40 dB",
    "synthetic_lpips_sr": "< synthetic_lpips_bicubic",
    "real_psnr_gain_db": "> 0 dB (Wald: 40 m -> 10 m)",
    "real_lpips_sr": "< real_lpips_bicubic",
}


def _load(model_dir: Path, cfg: TrainConfig):
    import xr_opensr

    device = setup_runtime(cfg.run.device, cfg.run.threads)
    return xr_opensr.load_model(str(model_dir), device=device)


def draw_samples(net, lr: torch.Tensor, cfg: TrainConfig, first_seed: int = 0, progress: bool = False) -> np.ndarray:
    """(N, S, C, H, W) raw samples (without the consistency step) for LR patches (N, C, h, w),
    ``evaluate.batch_size`` patches per call; patch ``i`` uses seed ``first_seed + i``."""
    ev = cfg.evaluate
    from tqdm import tqdm

    parts = []
    starts = range(0, lr.shape[0], ev.batch_size)
    for a in tqdm(starts, desc="sampling", disable=not progress, leave=False):
        chunk = lr[a : a + ev.batch_size].numpy()
        seeds = [first_seed + a + i for i in range(chunk.shape[0])]
        parts.append(net.sample(chunk, samples=ev.samples, steps=ev.steps, eta=ev.eta, seed=seeds,
                                histogram_matching=ev.histogram_matching, consistency=False))
    return np.concatenate(parts)


def with_consistency(net, raw: np.ndarray, lr: torch.Tensor) -> np.ndarray:
    """The model's consistency step on raw samples: what ``net.sample`` returns by default."""
    return net.apply_consistency(raw, lr.numpy())


def fit_std_scale(samples: np.ndarray, hr: np.ndarray, coverage: float) -> float:
    """The factor s such that |mean - hr| <= 2 s std holds for ``coverage`` of the values (raw sample std)."""
    if samples.shape[1] < 2:
        raise ValueError("calibration needs at least 2 samples per input (evaluate.samples)")
    mean = samples.mean(axis=1)
    std = samples.std(axis=1, ddof=1)
    err = np.abs(mean - hr)
    ok = np.isfinite(err) & np.isfinite(std)
    ratio = err[ok] / np.maximum(2.0 * std[ok], 1e-12)
    return float(max(np.quantile(ratio, coverage), 1e-6))


def calibrate(cfg: TrainConfig, run_dir: Path, model_dir: Path, progress: bool = True) -> float:
    """Fit ``std_scale`` on the validation scenes and write it into ``model_dir/config.json``."""
    ev = cfg.evaluate
    net = _load(model_dir, cfg)
    hr, lr = synthetic_pairs(cfg, ev.validation_seed, ev.validation_items)
    samples = with_consistency(net, draw_samples(net, lr, cfg, first_seed=ev.validation_seed, progress=progress), lr)
    scale = fit_std_scale(samples, hr.numpy(), ev.coverage_target)
    set_std_scale(model_dir, scale)
    (model_dir / METRICS_FILE).unlink(missing_ok=True)  # measured with the previous std_scale
    write_card(model_dir, cfg, run_dir, None)
    LOG.info("calibrate: std_scale = %.4g (+-2 std covers %.1f %% of |SR mean - HR| on %d validation scenes)",
             scale, 100 * ev.coverage_target, ev.validation_items)
    return scale


@torch.no_grad()
def autoencoder_round_trip(net, hr: torch.Tensor) -> np.ndarray:
    """HR reflectance -> posterior mean -> decoder -> reflectance."""
    x = net.normalize(hr.to(net.device))
    return net.denormalize(net.autoencoder.decode(net.autoencoder.encode(x).mode())).cpu().numpy()


def score(net, hr: torch.Tensor, lr: torch.Tensor, cfg: TrainConfig, samples: np.ndarray,
          raw: np.ndarray | None = None) -> dict[str, Any]:
    """All metrics of one set of patches: SR mean (of ``samples``, std with the model's std_scale) and
    bicubic, each vs the HR reference (reflectance, PSNR peak 1.0). With the ``raw`` samples (before
    the consistency step) also their PSNR, and that of bicubic followed by the same step."""
    from xr_opensr import metrics as M

    hr_np, lr_np = hr.numpy(), lr.numpy()
    mean, std = net.summarize(samples)
    bicubic = M.bicubic_upsample(lr_np, cfg.model.scale)
    err = mean - hr_np
    calib = M.uncertainty_calibration(std, err)
    baseline = M.uncertainty_calibration(M.gradient_magnitude(bicubic), err)
    out: dict[str, Any] = {
        "items": int(hr_np.shape[0]),
        "psnr_sr": M.psnr(mean, hr_np),
        "psnr_bicubic": M.psnr(bicubic, hr_np),
        "psnr_sample": M.psnr(samples[:, 0], hr_np),
        "ssim_sr": M.ssim(mean, hr_np),
        "ssim_bicubic": M.ssim(bicubic, hr_np),
        "sam_sr_deg": M.spectral_angle(mean, hr_np),
        "sam_bicubic_deg": M.spectral_angle(bicubic, hr_np),
        "consistency_sr_db": M.reflectance_consistency(mean, lr_np, cfg.model.scale),
        "consistency_bicubic_db": M.reflectance_consistency(bicubic, lr_np, cfg.model.scale),
        "coverage_2std": calib["coverage_2std"],
        "spearman_std_err": calib["spearman"],
        "spearman_gradient_err": baseline["spearman"],
        "mean_std": calib["mean_std"],
        "mean_abs_err": calib["mean_abs_error"],
        "ae_round_trip_psnr": M.psnr(autoencoder_round_trip(net, hr), hr_np),
    }
    out["psnr_gain_db"] = out["psnr_sr"] - out["psnr_bicubic"]
    if raw is not None and net.config.consistency.active:
        out["psnr_sr_raw"] = M.psnr(raw.mean(axis=1), hr_np)
        out["psnr_bicubic_consistency"] = M.psnr(with_consistency(net, bicubic[:, None], lr)[:, 0], hr_np)
        out["consistency_sr_raw_db"] = M.reflectance_consistency(raw.mean(axis=1), lr_np, cfg.model.scale)
    if min(hr_np.shape[-2:]) >= 32:
        out["lpips_sr"], info = M.lpips(mean, hr_np, net=cfg.evaluate.lpips_net, return_info=True)
        out["lpips_bicubic"] = M.lpips(bicubic, hr_np, net=cfg.evaluate.lpips_net)
        out["lpips_net"] = info["net"]
    return out


def evaluate(cfg: TrainConfig, run_dir: Path, model_dir: Path, *, calibrate_first: bool = True,
             progress: bool = True) -> dict[str, Any]:
    """Calibrate (unless told not to), then score on held-out synthetic and real data; returns the metrics."""
    ev = cfg.evaluate
    run_dir, model_dir = Path(run_dir), Path(model_dir)
    t0 = time.perf_counter()
    if calibrate_first:
        calibrate(cfg, run_dir, model_dir, progress)
    net = _load(model_dir, cfg)
    results: dict[str, Any] = {
        "settings": {"samples": ev.samples, "steps": ev.steps, "eta": ev.eta, "histogram_matching":
                     ev.histogram_matching, "std_scale": net.config.std_scale, "lpips_net": ev.lpips_net,
                     "patch_lr_px": cfg.model.patch_size, "psnr_peak": "reflectance 1.0"},
    }
    out_dir = run_dir / "evaluate"
    out_dir.mkdir(parents=True, exist_ok=True)

    hr, lr = synthetic_pairs(cfg, ev.test_seed, ev.test_items)
    raw = draw_samples(net, lr, cfg, first_seed=ev.test_seed, progress=progress)
    samples = with_consistency(net, raw, lr)
    results["synthetic_heldout"] = score(net, hr, lr, cfg, samples, raw)
    _grid(out_dir / "synthetic_heldout.png", net, hr, lr, samples, cfg)

    try:
        hr, lr = heldout_pairs(cfg, ev.real_items)
    except (FileNotFoundError, ImportError, OSError) as err:  # the real scene is optional
        LOG.warning("evaluate: no held-out real crops (%s)", err)
        results["real_heldout"] = {"unavailable": str(err)}
    else:
        raw = draw_samples(net, lr, cfg, first_seed=0, progress=progress)
        samples = with_consistency(net, raw, lr)
        results["real_heldout"] = score(net, hr, lr, cfg, samples, raw)
        _grid(out_dir / "real_heldout.png", net, hr, lr, samples, cfg)

    syn, real = results["synthetic_heldout"], results["real_heldout"]
    summary = {
        "synthetic_psnr_sr": syn["psnr_sr"],
        "synthetic_psnr_bicubic": syn["psnr_bicubic"],
        "synthetic_psnr_gain_db": syn["psnr_gain_db"],
        "synthetic_ssim_sr": syn["ssim_sr"],
        "synthetic_ssim_bicubic": syn["ssim_bicubic"],
        "synthetic_lpips_sr": syn.get("lpips_sr"),
        "synthetic_lpips_bicubic": syn.get("lpips_bicubic"),
        "synthetic_coverage_2std": syn["coverage_2std"],
        "synthetic_spearman_std_err": syn["spearman_std_err"],
        "synthetic_spearman_gradient_err": syn["spearman_gradient_err"],
        "synthetic_consistency_db": syn["consistency_sr_db"],
        "synthetic_ae_round_trip_psnr": syn["ae_round_trip_psnr"],
        "synthetic_psnr_sr_raw": syn.get("psnr_sr_raw"),
        "synthetic_psnr_bicubic_consistency": syn.get("psnr_bicubic_consistency"),
    }
    if "psnr_sr" in real:
        summary.update({
            "real_psnr_sr": real["psnr_sr"],
            "real_psnr_bicubic": real["psnr_bicubic"],
            "real_psnr_gain_db": real["psnr_gain_db"],
            "real_lpips_sr": real.get("lpips_sr"),
            "real_lpips_bicubic": real.get("lpips_bicubic"),
            "real_coverage_2std": real["coverage_2std"],
            "real_spearman_std_err": real["spearman_std_err"],
            "real_consistency_db": real["consistency_sr_db"],
            "real_ae_round_trip_psnr": real["ae_round_trip_psnr"],
            "real_psnr_sr_raw": real.get("psnr_sr_raw"),
            "real_psnr_bicubic_consistency": real.get("psnr_bicubic_consistency"),
        })
    summary["std_scale"] = net.config.std_scale
    summary = {k: v for k, v in summary.items() if v is not None}
    results["summary"] = summary
    results["goals"] = GOALS
    results["wall_s"] = round(time.perf_counter() - t0, 1)
    text = json.dumps(results, indent=2, default=float) + "\n"
    (model_dir / METRICS_FILE).write_text(text)
    (out_dir / METRICS_FILE).write_text(text)
    write_card(model_dir, cfg, run_dir, results)
    for key, value in summary.items():
        LOG.info("evaluate: %-34s %s", key, f"{value:.4g}" if isinstance(value, float) else value)
    return results


def _grid(path: Path, net, hr, lr, samples, cfg: TrainConfig, n: int = 4) -> None:
    from xr_opensr import metrics as M

    mean, std = net.summarize(samples[:n])
    save_grid(path, {"LR": lr[:n].numpy(), "bicubic": M.bicubic_upsample(lr[:n].numpy(), cfg.model.scale),
                     "SR mean": mean, "HR": hr[:n].numpy(), "std": std, "|err|": np.abs(mean - hr[:n].numpy())})
