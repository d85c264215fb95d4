"""Sampling speed of the engine: time per DDIM step, and batching samples vs looping.

    python benchmarks/bench_sampling.py                 # tiny + LDSR-S2 v1 configs, CPU or GPU
    python benchmarks/bench_sampling.py --models tiny   # quick

Prints (1) seconds per DDIM step (one UNet call + update) for each config at 32x32 and 128x128
latents, and (2) the ratio  time(sample(samples=10)) / time(10 x sample(samples=1))  on one LR
patch (goal: <= 0.9 on CPU, <= 0.3 on GPU). Weights are seeded random: speed does not depend on them.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from xr_opensr.models import SRModel, ldsr_s2_v1_config, tiny_config
from xr_opensr.models.diffusion import DDIMSampler
from xr_opensr.models.pipeline import resolve_device

CONFIGS = {"tiny": tiny_config, "v1": ldsr_s2_v1_config}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def time_per_step(net: SRModel, size: int, repeats: int) -> float:
    device = net.device
    x = torch.randn(1, 4, size, size, device=device)
    cond = torch.randn_like(x)
    sampler = DDIMSampler(net.schedule, 100, 0.95)
    t = torch.full((1,), 501, device=device, dtype=torch.long)
    noise = torch.randn_like(x)
    sampler.step(x, net.denoise(x, t, cond), 50, noise)  # warm-up
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        sampler.step(x, net.denoise(x, t, cond), 50, noise)
    _sync(device)
    return (time.perf_counter() - start) / repeats


def batching_ratio(net: SRModel, lr_size: int, steps: int, samples: int = 10) -> tuple[float, float, float]:
    lr = np.random.default_rng(0).uniform(0.02, 0.3, (1, 4, lr_size, lr_size)).astype(np.float32)
    net.sample(lr, samples=1, steps=1)  # warm-up
    _sync(net.device)
    start = time.perf_counter()
    net.sample(lr, samples=samples, steps=steps)
    _sync(net.device)
    batched = time.perf_counter() - start
    start = time.perf_counter()
    for s in range(samples):
        net.sample(lr, samples=1, steps=steps, seed=s)
    _sync(net.device)
    looped = time.perf_counter() - start
    return batched, looped, batched / looped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["tiny", "v1"], choices=sorted(CONFIGS))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4, help="DDIM steps in the batching comparison")
    args = parser.parse_args()
    device = resolve_device(args.device)
    print(f"device: {device}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    for name in args.models:
        cfg = CONFIGS[name]()
        torch.manual_seed(0)
        net = SRModel(cfg.replace(patch_size=32, default_overlap=4)).place(device)
        for size in (32, 128):
            print(f"{name:5s} latent {size:3d}x{size:<3d}: {time_per_step(net, size, args.repeats) * 1e3:9.1f} ms per DDIM step")
        batched, looped, ratio = batching_ratio(net, 32, args.steps)
        print(
            f"{name:5s} samples=10 on a 32x32 LR patch, {args.steps} steps: batched {batched:.2f} s, "
            f"10 x samples=1 {looped:.2f} s, ratio {ratio:.2f}"
        )


if __name__ == "__main__":
    main()
