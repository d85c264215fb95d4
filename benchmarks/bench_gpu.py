"""Throughput of the batched engine on one GPU: patches/s, UNet share of the bf16 peak, whole-tile time.

    python benchmarks/bench_gpu.py                       # one CUDA GPU, < 5 minutes
    python benchmarks/bench_gpu.py --device cpu --quick  # smoke run on the CPU (small sizes)

For the shipped default model (trained weights) and the LDSR-S2 v1 architecture (seeded random
weights: speed does not depend on them), in float32 and bfloat16 (denoiser and decoder), prints
1. the UNet alone at several batch sizes: ms per call, latents/s, FLOPs per latent (counted with
   ``torch.utils.flop_counter.FlopCounterMode``, not guessed), achieved TFLOP/s and the share of
   the device's dense bf16 peak (``--peak-tflops``, or a table of known GPUs);
2. the whole engine path (``SRModel.sample_summary``: encoder, DDIM, decoder, histogram matching,
   consistency step, running mean/std) at several batch sizes: patches/s at ``samples=10`` and the
   model's own number of steps, and the projected wall time of a whole Sentinel-2 tile
   (10980 x 10980 LR pixels at the model's patch grid) on this one device;
3. for the default model: the PSNR of bf16 vs fp32 SR means on synthetic scenes (goal: within 0.05 dB).
Each timing is the best of ``--repeats`` runs after a warm-up; CUDA timings synchronise.
"""

from __future__ import annotations

import argparse
import math
import os
import time

import numpy as np
import torch

import xr_opensr
from xr_opensr import metrics as M
from xr_opensr.models import ldsr_s2_v1_config
from xr_opensr.models.io import seeded_model

TILE_LR = 10980
#: dense (no sparsity) bf16 tensor-core peaks, TFLOP/s, from the vendors' data sheets
PEAKS = {"H200": 989.4, "H100": 989.4, "A100": 312.0, "L40S": 362.1, "L4": 121.0, "A10": 125.0}


def peak_tflops(device: torch.device, given: float | None) -> float | None:
    if given:
        return given
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAKS.items() if k in name), None)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_time(fn, device: torch.device, repeats: int) -> float:
    fn()
    sync(device)
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def unet_flops(net, batch: int, latent: int) -> float:
    """FLOPs of one denoiser call on ``batch`` latents (counted on the device, fp32)."""
    from torch.utils.flop_counter import FlopCounterMode

    e = net.config.autoencoder.embed_dim
    x = torch.randn(batch, e, latent, latent, device=net.device)
    t = torch.full((batch,), 500, device=net.device)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        net.denoise(x, t, x)
    return float(counter.get_total_flops())


def bench_unet(net, name: str, dtype: str, batches: list[int], latent: int, peak: float | None, repeats: int) -> None:
    e = net.config.autoencoder.embed_dim
    per_latent = unet_flops(net, 1, latent)
    for b in batches:
        x = torch.randn(b, e, latent, latent, device=net.device)
        t = torch.full((b,), 500, device=net.device)
        with torch.inference_mode():
            sec = best_time(lambda x=x, t=t: net.denoise(x, t, x), net.device, repeats)
        tflops = per_latent * b / sec / 1e12
        share = f"{100 * tflops / peak:5.1f} % of {peak:.0f}" if peak else "n/a (no peak known: --peak-tflops)"
        print(f"  {name:8s} {dtype:8s} UNet batch {b:4d}: {sec * 1e3:8.2f} ms/call, {b / sec:9.1f} latents/s, "
              f"{per_latent / 1e9:.2f} GFLOP/latent, {tflops:7.2f} TFLOP/s, bf16 peak share {share}")


def bench_engine(net, name: str, dtype: str, batches: list[int], patches: int, samples: int, steps: int,
                 repeats: int) -> float:
    """Patches/s of sample_summary at each batch size; returns the best."""
    p = net.config.patch_size
    lr = np.random.default_rng(0).uniform(0.02, 0.3, (patches, 4, p, p)).astype(np.float32)
    seeds = list(range(patches))
    stride = p - net.config.default_overlap
    tile_patches = math.ceil((TILE_LR - net.config.default_overlap) / stride) ** 2
    best = 0.0
    for b in batches:
        sec = best_time(lambda b=b: net.sample_summary(lr, samples=samples, steps=steps, seed=seeds, batch_size=b),
                        net.device, repeats)
        rate = patches / sec
        best = max(best, rate)
        print(f"  {name:8s} {dtype:8s} engine batch {b:4d} latents: {rate:8.2f} patches/s "
              f"(samples={samples}, {steps} steps) -> whole tile ({tile_patches:,} patches of {p}^2 at stride "
              f"{stride}) {tile_patches / rate / 60:8.1f} min")
    return best


def bf16_quality(device: torch.device, scenes: int) -> None:
    from bench_sampling import scenes as make_scenes

    hr, lr = make_scenes(scenes, 128)
    seeds = list(range(scenes))
    out = {}
    for dtype in (None, "bfloat16"):
        net = xr_opensr.load_model("default", device=device, dtype=dtype)
        out[dtype] = net.sample_summary(lr, samples=10, seed=seeds)[:, 0]
    a, b = M.psnr(out[None], hr), M.psnr(out["bfloat16"], hr)
    print(f"default model, {scenes} synthetic scenes, samples=10: PSNR fp32 {a:.4f} dB, bf16 {b:.4f} dB, "
          f"difference {b - a:+.4f} dB (goal within 0.05), mean |bf16 - fp32| {np.abs(out[None] - out['bfloat16']).mean():.2e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run, e.g. on the CPU)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak of the device")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU: run with --device cpu --quick for a smoke run")
    peak = peak_tflops(device, args.peak_tflops)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device {where}, torch {torch.__version__}, load {os.getloadavg()[0]:.2f}")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    quick = args.quick
    dtypes = [None, "bfloat16"]
    for name in ("default", "v1"):
        for dtype in dtypes:
            label = dtype or "float32"
            if name == "default":  # its diffusion model (model v2: the diffusion part)
                net = xr_opensr.load_model("default", device=device, dtype=dtype)
                net = getattr(net, "diffusion", net)
            else:
                cfg = ldsr_s2_v1_config()
                if quick:  # a 32^2 LR patch instead of 128^2: the same networks, 16x fewer pixels
                    cfg = cfg.replace(patch_size=32, default_overlap=4)
                net = seeded_model(cfg).place(device, dtype)
            net.prepare_inference()
            latent = net.config.patch_size
            unet_batches = [1, 4] if quick else ([16, 64, 256] if name == "default" else [4, 16, 32])
            bench_unet(net, name, label, unet_batches, latent, peak, args.repeats)
            steps = 2 if quick else net.config.sampler.steps
            patches = 2 if quick else (64 if name == "default" else 4)
            engine_batches = [4, 20] if quick else ([80, 320, 640] if name == "default" else [20, 40])
            repeats = 1 if quick or name == "v1" else args.repeats  # v1 at 100 steps: ~10 s a run in fp32
            bench_engine(net, name, label, engine_batches, patches, 2 if quick else 10, steps, repeats)
            del net
            if device.type == "cuda":
                torch.cuda.empty_cache()
    bf16_quality(device, 2 if quick else 16)


if __name__ == "__main__":
    main()
