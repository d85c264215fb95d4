"""Calibrate the uncertainty on validation scenes, then score the model on three held-out sets.

1. ``calibrate``: sample the *validation* synthetic scenes (seeds ``evaluate.validation_seed + i``,
   used by neither training nor the test), and set ``std_scale`` so that ``|SR mean - HR| <= 2 *
   std_scale * std`` for ``evaluate.coverage_target`` of the pixels; written into the model's
   ``config.json``.
2. ``evaluate``: on three sets that training and calibration never see --

   * ``synthetic_heldout``: synthetic scenes of the training generator and sensor (seeds
     ``evaluate.test_seed + i``);
   * ``real_heldout``: crops of the real scene's held-out part (south of the line, Wald's protocol:
     the LR is the degraded 10 m image, the 10 m image is the reference); only read here;
   * ``unseen_domain``: synthetic scenes of another generator setting (``evaluate.unseen_scene``:
     land-cover mix, parcel size, texture scale and strength, clouds) seen through another sensor
     (``evaluate.unseen_degradation``: PSF sigma 1.4-2.0, noise, sub-pixel misregistration), seeds
     ``evaluate.unseen_seed + i`` --

   every method (:data:`training.card.METHODS`: bicubic, bicubic + the consistency step, the SR mean, one SR
   sample, the regression baseline of ``training regression`` when trained) is scored against the
   reference: PSNR and its gains over bicubic and over bicubic + the consistency step (the
   headline: what the networks add), SSIM, LPIPS, spectral angle, reflectance consistency and the
   opensr-test family (:func:`xr_opensr.metrics.opensr_test_metrics`). The uncertainty of the
   first ``k`` samples, for each ``k`` of ``evaluate.sample_counts``: +-2 std coverage and
   Spearman(std, |error|) beside the trivial baseline Spearman(gradient magnitude of bicubic,
   |error|); the regression baseline has none (n/a). Writes ``metrics.json`` and ``EVALUATION.md``
   (every figure as markdown tables, :func:`training.card.metrics_table`) into the model folder and
   the run's ``evaluate/`` folder, and the figures into the model card (:func:`training.card.write_card`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xr_opensr import metrics as M
from xr_opensr.models import ModelConfig
from xr_opensr.models.io import CONFIG_FILE
from xr_opensr.testing import SceneStyle

from . import data
from .card import METRICS_FILE, SETS, metrics_table, write_card
from .config import EXTRA_SETS, FINE_SCENES, FINE_TEST_SCENE, TrainConfig
from .loop import LOG, PairSampler, heldout_pairs, save_grid, setup_runtime, synthetic_pairs

__all__ = ["EVAL_TABLE_FILE", "GOALS", "balanced_scale", "calibrate", "calibrate_v2", "calibration_domains", "evaluate", "evaluation_seeds", "fit_std_scale",
           "score", "unseen_pairs"]

EVAL_TABLE_FILE = "EVALUATION.md"

GOALS = {
    "synthetic_psnr_gain_db": ">= +0.5 dB",
    "synthetic_psnr_gain_over_bicubic_consistency_db": ">= +1.2 dB",
    "real_psnr_gain_over_bicubic_consistency_db": ">= +1.5 dB",
    "real_psnr_sr": ">= real_psnr_regression - 0.2 dB",
    "real_lpips_sample": "< real_lpips_regression and < real_lpips_bicubic",
    "real_improvement_sr": "> real_improvement_bicubic_consistency",
    "synthetic_lpips_sr": "< synthetic_lpips_bicubic",
    "real_psnr_gain_db": "> 0 dB (Wald: 40 m -> 10 m)",
    "real_lpips_sr": "< real_lpips_bicubic",
    **{f"{p}_consistency_db": ">= 40 dB" for p in (SETS | EXTRA_SETS).values()},
    **{f"{p}_coverage_2std{k}": "0.85 - 0.99" for p in (SETS | EXTRA_SETS).values() for k in ("", "_s4", "_s10")},
    **{f"{p}_spearman_std_err{k}": f">= {p}_spearman_gradient_err{k} + 0.05" for p in (SETS | EXTRA_SETS).values()
       for k in ("", "_s4", "_s10")},
}


def _load(model_dir: Path, cfg: TrainConfig):
    import xr_opensr

    device = setup_runtime(cfg.run.device, cfg.run.threads)
    return xr_opensr.load_model(str(model_dir), device=device)


def draw_samples(net, lr: torch.Tensor, cfg: TrainConfig, first_seed: int = 0, progress: bool = False,
                 samples: int | None = None) -> np.ndarray:
    """(N, S, C, H, W) raw samples (without the consistency step) for LR patches (N, C, h, w),
    ``evaluate.batch_size`` patches per call; patch ``i`` uses seed ``first_seed + i``; ``samples``
    per patch (default ``evaluate.samples``)."""
    ev = cfg.evaluate
    from tqdm import tqdm

    parts = []
    starts = range(0, lr.shape[0], ev.batch_size)
    for a in tqdm(starts, desc="sampling", disable=not progress, leave=False):
        chunk = lr[a : a + ev.batch_size].numpy()
        seeds = [first_seed + a + i for i in range(chunk.shape[0])]
        parts.append(net.sample(chunk, samples=samples or ev.samples, steps=ev.steps, eta=ev.eta, seed=seeds,
                                histogram_matching=ev.histogram_matching, consistency=False))
    return np.concatenate(parts)


def with_consistency(net, raw: np.ndarray, lr: torch.Tensor) -> np.ndarray:
    """The model's consistency step on raw samples: what ``net.sample`` returns by default (a model
    with a mean path, ``info.mean_without_samples`` (model v2): its samples are final, built around the
    mean, which had the step)."""
    return raw if net.info.mean_without_samples else net.apply_consistency(raw, lr.numpy())


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


def set_std_scale(folder: Path, std_scale: float) -> None:
    """Write a calibrated ``std_scale`` into the model folder's ``config.json``."""
    cfg = ModelConfig.from_json(folder / CONFIG_FILE)
    cfg.replace(std_scale=float(std_scale)).to_json(folder / CONFIG_FILE)


def calibrate(cfg: TrainConfig, run_dir: Path, model_dir: Path, progress: bool = True) -> float:
    """Fit ``std_scale`` on the validation scenes and write it into ``model_dir/config.json`` (model
    v2: :func:`calibrate_v2`, on a mix of validation domains); the card says it, the old metrics go."""
    ev = cfg.evaluate
    net = _load(model_dir, cfg)
    if net.info.mean_without_samples:  # model v2: the spread of its mean path
        scale = calibrate_v2(cfg, model_dir, net)
    else:
        hr, lr = synthetic_pairs(cfg, ev.validation_seed, ev.validation_items)
        raw = draw_samples(net, lr, cfg, first_seed=ev.validation_seed, progress=progress)
        scale = fit_std_scale(with_consistency(net, raw, lr), hr.numpy(), ev.coverage_target)
        set_std_scale(model_dir, scale)
        LOG.info("calibrate: std_scale = %.4g (+-2 std covers %.1f %% of |SR mean - HR| on %d validation scenes)",
                 scale, 100 * ev.coverage_target, ev.validation_items)
    (model_dir / METRICS_FILE).unlink(missing_ok=True)  # measured with the previous std_scale
    write_card(model_dir, cfg, run_dir, None)
    return scale


def calibrate_v2(cfg: TrainConfig, model_dir: Path, net) -> float:
    """Fit ``std_scale`` of ``net`` (loaded from ``model_dir``) so that +-2 std covers
    ``evaluate.coverage_target`` of |mean - HR| as evenly as one factor can over the validation domains
    (:func:`calibration_domains`): the factor whose worst domain is nearest the target. Writes it into
    ``model_dir/config.json`` and returns it."""
    ev = cfg.evaluate
    ratios = {}
    for name, (hr, lr) in calibration_domains(cfg).items():
        mean, unit = net.mean_and_spread(lr, torch.zeros(lr.shape[0], *lr.shape[-2:], dtype=torch.bool))
        ratios[name] = (np.abs(mean - hr.numpy()) / np.maximum(2.0 * unit, 1e-12)).ravel()
    scale, coverage = balanced_scale(ratios, ev.coverage_target)
    set_std_scale(model_dir, scale)
    LOG.info("calibrate: std_scale = %.4g: +-2 std covers %s of |mean - HR| (target %.1f %%)", scale,
             ", ".join(f"{100 * c:.1f} % on {n}" for n, c in coverage.items()), 100 * ev.coverage_target)
    return scale


def calibration_domains(cfg: TrainConfig) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(HR, LR) of the validation domains the uncertainty is calibrated on: the synthetic validation scenes
    (seeds ``evaluate.validation_seed + i``) through the default sensor and through the training's
    randomised one, the fine-texture styles of :data:`training.config.FINE_SCENES`, and the calibration
    half of the BigEarthNet patches (real; :func:`training.data.bigearthnet_pairs`). The unseen-domain and
    held-out sets are never used."""
    ev = cfg.evaluate
    seeds = range(ev.validation_seed, ev.validation_seed + ev.validation_items)
    fixed = fixed_sensor(cfg).degradation_config()
    pairs = {"synthetic": data.synthetic_pairs(cfg.data_config(), fixed, hr_size=cfg.hr_patch, seeds=seeds),
             "synthetic, randomised sensor": data.synthetic_pairs(cfg.data_config(), cfg.degradation_config(),
                                                                  hr_size=cfg.hr_patch, seeds=seeds)}
    for i, style in enumerate(FINE_SCENES):
        pairs[f"fine texture {i + 1}"] = data.synthetic_pairs(cfg.data_config(), fixed, hr_size=cfg.hr_patch,
                                                              seeds=seeds, style=SceneStyle.from_dict(style))
    pairs["BigEarthNet (calibration half)"] = data.bigearthnet_pairs(fixed, split="calibration")
    return {name: PairSampler(p).items(list(range(len(p)))) for name, p in pairs.items()}


def balanced_scale(ratios: dict[str, np.ndarray], target: float) -> tuple[float, dict[str, float]]:
    """The factor ``s`` minimising the largest |coverage - target| over the domains, where a domain's
    coverage is the share of its ``ratios`` (|error| / (2 std)) <= ``s``; and each domain's coverage at it."""
    pooled = np.concatenate(list(ratios.values()))
    lo, hi = (float(v) for v in np.quantile(pooled, [0.3, 0.9995]))
    grid = np.geomspace(max(lo, 1e-6), max(hi, 2e-6), 4000)
    sorted_ratios = {n: np.sort(r) for n, r in ratios.items()}
    cover = np.stack([np.searchsorted(r, grid, side="right") / len(r) for r in sorted_ratios.values()])
    scale = float(grid[int(np.argmin(np.abs(cover - target).max(axis=0)))])
    return scale, {n: float(np.mean(r <= scale)) for n, r in ratios.items()}


@torch.no_grad()
def autoencoder_round_trip(net, hr: torch.Tensor) -> np.ndarray:
    """HR reflectance -> posterior mean -> decoder -> reflectance (model v2: of its diffusion part)."""
    net = getattr(net, "diffusion", net)
    x = net.normalize(hr.to(net.device))
    return net.denormalize(net.autoencoder.decode(net.autoencoder.encode(x).mode())).cpu().numpy()


# --------------------------------------------------------------------------- the sets


def evaluation_seeds(cfg: TrainConfig) -> dict[str, list[int]]:
    """The plain scene seeds of the synthetic sets: calibration (``validation``), ``synthetic_heldout``
    and ``unseen_domain`` (disjoint: :class:`TrainConfig` checks it). Training scenes use ``(data.seed,
    tag, i)`` sequences, never a plain seed; the real held-out crops have no seed."""
    ev = cfg.evaluate
    return {"validation": list(range(ev.validation_seed, ev.validation_seed + ev.validation_items)),
            "synthetic_heldout": list(range(ev.test_seed, ev.test_seed + ev.test_items)),
            "unseen_domain": list(range(ev.unseen_seed, ev.unseen_seed + ev.unseen_items))}


def unseen_pairs(cfg: TrainConfig, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The unseen-domain set: (HR, LR) of ``n`` (default ``evaluate.unseen_items``) scenes of
    ``evaluate.unseen_scene`` (clouds with probability ``evaluate.unseen_clouds``) through the sensor of
    ``evaluate.unseen_degradation``, from seeds ``evaluate.unseen_seed + i``. Evaluation only."""
    ev = cfg.evaluate
    n = ev.unseen_items if n is None else n
    pairs = data.synthetic_pairs(cfg.data_config(), cfg.unseen_degradation_config(), hr_size=cfg.hr_patch,
                                 seeds=range(ev.unseen_seed, ev.unseen_seed + n), style=cfg.unseen_style(),
                                 clouds=ev.unseen_clouds)
    return PairSampler(pairs).items(list(range(len(pairs))))


def fixed_sensor(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with the training degradation's randomisation (PSF and noise ranges, shifts) removed:
    the sensor of the synthetic test and real held-out pairs, the same for every model whatever
    randomisation its training used (the unseen-domain set has a sensor of its own)."""
    import dataclasses

    d = cfg.degradation_config()
    if not d.randomised:
        return cfg
    fixed = dataclasses.replace(d, psf_sigma_range=None, noise_std_range=None, shift_max=0.0)
    return cfg.replace(degradation=fixed.to_dict())


def _set_pairs(cfg: TrainConfig, name: str) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(HR, LR, first sampler seed) of an evaluation set."""
    ev = cfg.evaluate
    cfg = fixed_sensor(cfg)
    if name == "synthetic_heldout":
        return (*synthetic_pairs(cfg, ev.test_seed, ev.test_items), ev.test_seed)
    if name == "real_heldout":
        return (*heldout_pairs(cfg, ev.real_items), 0)
    if name == "fine_texture":
        pairs = data.synthetic_pairs(cfg.data_config(), cfg.degradation_config(), hr_size=cfg.hr_patch,
                                     seeds=range(ev.test_seed, ev.test_seed + ev.test_items // 2),
                                     style=SceneStyle.from_dict(FINE_TEST_SCENE))
        return (*PairSampler(pairs).items(list(range(len(pairs)))), ev.test_seed)
    if name == "real_bigearthnet":
        pairs = data.bigearthnet_pairs(cfg.degradation_config(), split="evaluation")
        return (*PairSampler(pairs).items(list(range(len(pairs)))), 0)
    return (*unseen_pairs(cfg), ev.unseen_seed)


def consistency_baseline(net, cfg: TrainConfig):
    """The consistency step of the "bicubic + consistency step" baseline: the model's own, or (for a
    model without one) one back-projection step with the training degradation's PSF."""
    from xr_opensr.models.consistency import ConsistencyConfig

    step = net.config.consistency
    if step.active:
        return step
    return ConsistencyConfig(kernel="psf", psf_sigma=cfg.degradation_config().psf_sigma, iterations=1)


# --------------------------------------------------------------------------- scoring


def image_metrics(img: np.ndarray, hr: np.ndarray, lr: np.ndarray, cfg: TrainConfig) -> dict[str, float]:
    """Every full-reference and consistency metric of SR images (N, C, H, W) vs HR, given their LR."""
    out = {"psnr": M.psnr(img, hr), "ssim": M.ssim(img, hr), "sam_deg": M.spectral_angle(img, hr),
           "consistency_db": M.reflectance_consistency(img, lr, cfg.model.scale)}
    if min(hr.shape[-2:]) >= 32:
        out["lpips"] = M.lpips(img, hr, net=cfg.evaluate.lpips_net)
    out.update(M.opensr_test_metrics(img, lr, hr, border=cfg.evaluate.opensr_border))
    return out


def uncertainty_metrics(net, samples: np.ndarray, hr: np.ndarray, bicubic: np.ndarray,
                        counts: list[int], lr: np.ndarray | None = None) -> dict[str, dict[str, float]]:
    """``samples_<k>``: coverage and ranking of the std of the first ``k`` samples (the model's
    ``summarize``: std_scale applied) vs |mean - HR|, beside the bicubic-gradient map's ranking.
    A model with a mean path (model v2: its samples depend on how many are drawn): the engine's mean and
    std for ``k`` samples of ``lr``."""
    gradient = M.gradient_magnitude(bicubic)
    out = {}
    for k in counts:
        if net.info.mean_without_samples:
            summary = net.sample_summary(lr, samples=k)
            mean, std = summary[:, 0], summary[:, 1]
        else:
            mean, std = net.summarize(samples[:, :k])
        err = mean - hr
        calib, base = M.uncertainty_calibration(std, err), M.uncertainty_calibration(gradient, err)
        out[f"samples_{k}"] = {
            "coverage_2std": calib["coverage_2std"],
            "spearman_std_err": calib["spearman"],
            "spearman_gradient_err": base["spearman"],
            "spearman_margin": calib["spearman"] - base["spearman"],
            "mean_std": calib["mean_std"],
            "mean_abs_err": calib["mean_abs_error"],
        }
    return out


def score(net, hr: torch.Tensor, lr: torch.Tensor, cfg: TrainConfig, raw: np.ndarray,
          regression=None) -> dict[str, Any]:
    """All metrics of one set of patches from the raw samples (N, S, C, H, W; before the model's
    consistency step): ``methods`` (:data:`METHODS` -> :func:`image_metrics` with the PSNR gains over
    bicubic and over bicubic + the consistency step), ``uncertainty`` (:func:`uncertainty_metrics` for
    ``evaluate.sample_counts`` and ``evaluate.samples``), the autoencoder's round trip and timings."""
    from xr_opensr.models.consistency import enforce_consistency

    ev, scale = cfg.evaluate, cfg.model.scale
    hr_np, lr_np = hr.numpy(), lr.numpy()
    samples = with_consistency(net, raw, lr)
    bicubic = M.bicubic_upsample(lr_np, scale)
    images = {"bicubic": bicubic,
              "bicubic_consistency": enforce_consistency(bicubic, lr_np, scale, consistency_baseline(net, cfg)),
              "sr_mean": net.summarize(samples[:, :ev.samples])[0]}
    if net.config.consistency.active and not net.info.mean_without_samples:
        images["sr_mean_raw"] = raw[:, :ev.samples].mean(axis=1)
    images["sr_sample"] = samples[:, 0]
    timing = {}
    if regression is not None:
        t0 = time.perf_counter()
        images["regression"] = regression.predict(lr_np)[0]
        timing["regression_ms_per_patch"] = 1e3 * (time.perf_counter() - t0) / len(lr_np)
    if net.info.mean_without_samples:  # the fast deterministic path (samples=0), one patch per call as in the engine
        t0 = time.perf_counter()
        fast = np.concatenate([net.sample_summary(lr_np[i:i + 1], samples=0)[:, 0] for i in range(len(lr_np))])
        timing["fast_path_ms_per_patch"] = 1e3 * (time.perf_counter() - t0) / len(lr_np)
        images["fast_path"] = fast
    methods = {name: image_metrics(img, hr_np, lr_np, cfg) for name, img in images.items()}
    for values in methods.values():
        values["psnr_gain_db"] = values["psnr"] - methods["bicubic"]["psnr"]
        values["psnr_gain_over_bicubic_consistency_db"] = values["psnr"] - methods["bicubic_consistency"]["psnr"]
    counts = sorted({*ev.sample_counts, *([ev.samples] if ev.samples >= 2 else [])})
    out: dict[str, Any] = {
        "items": int(hr_np.shape[0]),
        "methods": methods,
        "uncertainty": uncertainty_metrics(net, samples, hr_np, bicubic, counts, lr_np),
        "ae_round_trip_psnr": M.psnr(autoencoder_round_trip(net, hr), hr_np),
        # what a perfect SR would score: the reference's own consistency with its LR (below the
        # 40 dB goal where the sensor's PSF, noise and misregistration separate the two)
        "reference_consistency_db": M.reflectance_consistency(hr_np, lr_np, scale),
        "timing": timing,
    }
    if "lpips" in methods["bicubic"]:
        out["lpips_net"] = M.lpips(bicubic[:1], hr_np[:1], net=ev.lpips_net, return_info=True)[1]["net"]
    return out


def _set_summary(prefix: str, r: dict[str, Any], samples: int) -> dict[str, Any]:
    """The summary keys (model card, goals) of one scored set; the names of earlier versions kept."""
    m, unc = r["methods"], r["uncertainty"]
    sr, bi, bc = m["sr_mean"], m["bicubic"], m["bicubic_consistency"]
    out = {
        "psnr_sr": sr["psnr"], "psnr_bicubic": bi["psnr"], "psnr_gain_db": sr["psnr_gain_db"],
        "psnr_bicubic_consistency": bc["psnr"],
        "psnr_gain_over_bicubic_consistency_db": sr["psnr_gain_over_bicubic_consistency_db"],
        "psnr_sr_raw": m.get("sr_mean_raw", {}).get("psnr"),
        "ssim_sr": sr["ssim"], "ssim_bicubic": bi["ssim"],
        "lpips_sr": sr.get("lpips"), "lpips_sample": m["sr_sample"].get("lpips"), "lpips_bicubic": bi.get("lpips"),
        "consistency_db": sr["consistency_db"],
        "improvement_sr": sr["improvement"], "hallucination_sr": sr["hallucination"],
        "improvement_bicubic_consistency": bc["improvement"],
        "ae_round_trip_psnr": r["ae_round_trip_psnr"],
        "reference_consistency_db": r.get("reference_consistency_db"),
    }
    if f"samples_{samples}" in unc:
        u = unc[f"samples_{samples}"]
        out.update(coverage_2std=u["coverage_2std"], spearman_std_err=u["spearman_std_err"],
                   spearman_gradient_err=u["spearman_gradient_err"])
    for key, u in unc.items():
        k = key.removeprefix("samples_")
        out.update({f"coverage_2std_s{k}": u["coverage_2std"], f"spearman_std_err_s{k}": u["spearman_std_err"],
                    f"spearman_gradient_err_s{k}": u["spearman_gradient_err"]})
    if "fast_path_ms_per_patch" in r.get("timing", {}):
        out.update(fast_path_ms_per_patch=r["timing"]["fast_path_ms_per_patch"], psnr_fast_path=m["fast_path"]["psnr"])
    if "regression" in m:
        reg = m["regression"]
        out.update(psnr_regression=reg["psnr"], lpips_regression=reg.get("lpips"),
                   regression_psnr_gain_over_bicubic_consistency_db=reg["psnr_gain_over_bicubic_consistency_db"])
    return {f"{prefix}_{k}": v for k, v in out.items() if v is not None}


def _settings(cfg: TrainConfig, net, regression_path: Path | None, regression) -> dict[str, Any]:
    from .config import FINE_TEST_SCENE

    ev = cfg.evaluate
    seeds = evaluation_seeds(cfg)
    return {
        "samples": ev.samples, "sample_counts": list(ev.sample_counts), "steps": ev.steps, "eta": ev.eta,
        "histogram_matching": ev.histogram_matching, "std_scale": net.config.std_scale, "lpips_net": ev.lpips_net,
        "patch_lr_px": cfg.model.patch_size, "psnr_peak": "reflectance 1.0", "opensr_border_hr_px": ev.opensr_border,
        "consistency_baseline": consistency_baseline(net, cfg).describe(),
        "regression": str(regression_path) if regression is not None else "not trained (python -m training regression)",
        "sets": {
            "synthetic_heldout": f"{ev.test_items} synthetic scenes, seeds {seeds['synthetic_heldout'][0]}.."
                                 f"{seeds['synthetic_heldout'][-1]}, training generator and sensor",
            "real_heldout": f"up to {ev.real_items} crops of the real scene south of northing 4,169,000 m (Wald)",
            "unseen_domain": f"{ev.unseen_items} synthetic scenes, seeds {seeds['unseen_domain'][0]}.."
                             f"{seeds['unseen_domain'][-1]}, scenes {json.dumps(cfg.unseen_style().to_dict())}, "
                             f"clouds p={ev.unseen_clouds}, sensor "
                             f"{json.dumps(cfg.unseen_degradation_config().to_dict())}",
            "fine_texture": f"{ev.test_items // 2} synthetic scenes with more fine texture than training's, seeds "
                            f"{ev.test_seed}..{ev.test_seed + ev.test_items // 2 - 1}, scenes {json.dumps(FINE_TEST_SCENE)}, "
                            "training sensor",
            "real_bigearthnet": "12 real BigEarthNet v2.0 patches of 120 px (Wald; the evaluation half, "
                                "training/assets/bigearthnet)",
        },
    }


# --------------------------------------------------------------------------- evaluate


def evaluate(cfg: TrainConfig, run_dir: Path, model_dir: Path, *, calibrate_first: bool = True,
             progress: bool = True, regression_path: Path | None = None) -> dict[str, Any]:
    """Calibrate (unless told not to), then score the three sets; returns the metrics.

    ``regression_path``: the baseline of ``training regression`` (default
    ``run_dir/regression/regression.safetensors``; scored when the file exists).
    """
    from .regression import REGRESSION_FILE, load_regression

    ev = cfg.evaluate
    run_dir, model_dir = Path(run_dir), Path(model_dir)
    t0 = time.perf_counter()
    if calibrate_first:
        calibrate(cfg, run_dir, model_dir, progress)
    net = _load(model_dir, cfg)
    path = Path(regression_path) if regression_path is not None else run_dir / "regression" / REGRESSION_FILE
    regression = load_regression(path, net.device) if regression_path is not None or path.is_file() else None
    if regression is None:
        LOG.warning("evaluate: no regression baseline at %s (train it with `python -m training regression`)", path)
    results: dict[str, Any] = {"settings": _settings(cfg, net, path, regression)}
    out_dir = run_dir / "evaluate"
    out_dir.mkdir(parents=True, exist_ok=True)
    drawn = max([ev.samples, *ev.sample_counts])
    sets = SETS | {name: EXTRA_SETS[name] for name in ev.extra_sets}
    for name in sets:
        try:
            hr, lr, first_seed = _set_pairs(cfg, name)
        except (FileNotFoundError, ImportError, OSError) as err:  # the real scene is optional
            LOG.warning("evaluate: no %s set (%s)", name, err)
            results[name] = {"unavailable": str(err)}
            continue
        t_set = time.perf_counter()
        raw = draw_samples(net, lr, cfg, first_seed=first_seed, progress=progress, samples=drawn)
        sampling_s = time.perf_counter() - t_set
        results[name] = score(net, hr, lr, cfg, raw, regression)
        results[name]["timing"].update(sample_s_per_patch=sampling_s / len(lr),
                                       wall_s=round(time.perf_counter() - t_set, 1))
        mean, std = net.summarize(with_consistency(net, raw[:4, :ev.samples], lr[:4]))
        hr4, lr4 = hr[:4].numpy(), lr[:4].numpy()
        save_grid(out_dir / f"{name}.png", {"LR": lr4, "bicubic": M.bicubic_upsample(lr4, cfg.model.scale),
                                            "SR mean": mean, "HR": hr4, "std": std, "|err|": np.abs(mean - hr4)})
    summary: dict[str, Any] = {}
    for name, prefix in sets.items():
        if "methods" in results[name]:
            summary.update(_set_summary(prefix, results[name], ev.samples))
    summary["std_scale"] = net.config.std_scale
    results["summary"] = summary
    results["goals"] = GOALS
    results["wall_s"] = round(time.perf_counter() - t0, 1)
    _write(results, cfg, run_dir, model_dir, out_dir)
    for key, value in summary.items():
        LOG.info("evaluate: %-48s %s", key, f"{value:.4g}" if isinstance(value, float) else value)
    return results


def _write(results: dict[str, Any], cfg: TrainConfig, run_dir: Path, model_dir: Path, out_dir: Path) -> None:
    text = json.dumps(results, indent=2, default=float) + "\n"
    table = metrics_table(results)
    for folder in (model_dir, out_dir):
        (folder / METRICS_FILE).write_text(text)
        (folder / EVAL_TABLE_FILE).write_text(table)
    write_card(model_dir, cfg, run_dir, results)
