"""What each method choice of model v2 is worth, on validation data only.

Validation sets: synthetic validation scenes (the calibration seeds, 1,000,000+) through the default
sensor and through the v2 training's randomised sensor, and crops of the real scene's north (training)
part; never the test, held-out or unseen-domain sets. For each set it prints the PSNR of the means
(the v1 diffusion mean, the mean network alone, the mean network + the consistency step) and how well
each candidate uncertainty ranks the v2 mean's errors (Spearman) and covers them (±2 std), for the
learned spread and for the diffusion samples' spread.

    python benchmarks/v2_choices.py --model runs/v2/model --base default --items 16
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _sets(cfg, n: int):
    from training.data import real_pairs
    from training.data import synthetic_pairs as raw_pairs
    from training.loop import PairSampler

    seeds = range(cfg.evaluate.validation_seed, cfg.evaluate.validation_seed + n)
    out = {}
    from training.evaluate import fixed_sensor

    for name, deg in (("synthetic, default sensor", fixed_sensor(cfg).degradation_config()),
                      ("synthetic, randomised sensor", cfg.degradation_config())):
        pairs = raw_pairs(cfg.data_config(), deg, hr_size=cfg.hr_patch, seeds=seeds)
        out[name] = PairSampler(pairs).items(list(range(len(pairs))))
    pairs = real_pairs(cfg.data_config(), fixed_sensor(cfg).degradation_config(), hr_size=cfg.hr_patch,
                       split="train", limit=n)
    out["real north (training part)"] = PairSampler(pairs).items(list(range(len(pairs))))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="runs/v2/model")
    parser.add_argument("--base", default=None, help="the model v1 the diffusion networks come from (default: "
                        "the v2 model's own networks without the mean network)")
    parser.add_argument("--config", default=str(ROOT / "training" / "configs" / "v2.json"))
    parser.add_argument("--items", type=int, default=16)
    parser.add_argument("--samples", type=int, default=10)
    args = parser.parse_args()

    import xr_opensr
    from training.config import TrainConfig
    from xr_opensr import metrics as M

    torch.set_num_threads(1)
    cfg = TrainConfig.from_json(args.config)
    v2 = xr_opensr.load_model(args.model, device="cpu")
    if args.base is not None:
        v1 = xr_opensr.load_model(args.base, device="cpu")
    else:
        v1 = xr_opensr.load_model(args.model, device="cpu").diffusion  # model v2's diffusion part
    results = {}
    for name, (hr, lr) in _sets(cfg, args.items).items():
        t0 = time.perf_counter()
        hr_np, lr_np = hr.numpy(), lr.numpy()
        ok = torch.zeros(lr.shape[0], *lr.shape[-2:], dtype=torch.bool)
        raw_mean, unit = v2.mean_net.predict(lr_np)
        mean, _ = v2.mean_and_spread(lr, ok)
        ldm = v1.sample(lr_np, samples=args.samples, seed=list(range(len(lr_np))))
        v1_mean, v1_std = v1.summarize(ldm)
        err = mean - hr_np
        gradient = M.gradient_magnitude(M.bicubic_upsample(lr_np, 4))
        row = {"psnr_bicubic": M.psnr(M.bicubic_upsample(lr_np, 4), hr_np), "psnr_v1_mean": M.psnr(v1_mean, hr_np),
               "psnr_mean_net": M.psnr(raw_mean, hr_np), "psnr_mean_net_step": M.psnr(mean, hr_np)}
        for label, std in (("learned", unit * v2.config.std_scale), ("diffusion_spread", v1_std),
                           ("gradient", gradient)):
            cal = M.uncertainty_calibration(std, err)
            row[f"spearman_{label}"] = cal["spearman"]
            if label != "gradient":
                row[f"coverage_{label}"] = cal["coverage_2std"]
        row.update(_consistency_sweep(v2, raw_mean, lr_np, hr_np))
        row.update(_spread_candidates(unit * v2.config.std_scale, gradient, err))
        row["seconds"] = time.perf_counter() - t0
        results[name] = row
        print(f"{name}: " + ", ".join(f"{k} {v:.4g}" for k, v in row.items()), flush=True)
    results["fast_path"] = _fast_path_timing(v2, next(iter(_sets(cfg, args.items).values()))[1].numpy())
    print(json.dumps(results, indent=1))


def _consistency_sweep(net, raw_mean: np.ndarray, lr: np.ndarray, hr: np.ndarray) -> dict[str, float]:
    """PSNR and consistency (dB) of the mean network + 0..3 back-projection steps."""
    import dataclasses

    from xr_opensr import metrics as M
    from xr_opensr.models.consistency import enforce_consistency

    out = {}
    for k in range(4):
        img = raw_mean if k == 0 else enforce_consistency(
            raw_mean, lr, 4, dataclasses.replace(net.config.consistency, iterations=k))
        out[f"psnr_step{k}"] = M.psnr(img, hr)
        out[f"consistency_db_step{k}"] = M.reflectance_consistency(img, lr, 4)
    return out


def _spread_candidates(learned: np.ndarray, gradient: np.ndarray, err: np.ndarray) -> dict[str, float]:
    """Spearman(candidate, |err|) of the learned spread combined with the bicubic-gradient map
    (a geometric mean with the gradient scaled to the spread's median)."""
    from xr_opensr import metrics as M

    g = gradient * (np.median(learned) / max(float(np.median(gradient)), 1e-12))
    out = {}
    for w in (0.25, 0.5):
        cand = learned ** (1 - w) * np.maximum(g, 1e-6) ** w
        out[f"spearman_learned_x_gradient_w{w}"] = M.uncertainty_calibration(cand, err)["spearman"]
    return out


def _fast_path_timing(net, lr: np.ndarray) -> dict[str, float]:
    """ms per 32x32 LR patch of ``samples=0`` (one patch per call, as the engine calls it) and of
    ``samples=10`` (without returning samples), at 1 and 2 torch threads."""
    out = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for samples in (0, 10):
            net.sample_summary(lr[:1], samples=samples)  # warm-up
            t0 = time.perf_counter()
            for i in range(len(lr)):
                net.sample_summary(lr[i:i + 1], samples=samples)
            out[f"ms_per_patch_samples{samples}_threads{threads}"] = 1e3 * (time.perf_counter() - t0) / len(lr)
    print("fast path: " + ", ".join(f"{k} {v:.1f}" for k, v in out.items()), flush=True)
    return out


if __name__ == "__main__":
    main()
