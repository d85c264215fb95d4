"""CPU/GPU sampling speed: today's per-patch path vs the batched engine path, in the same run.

    python benchmarks/bench_sampling.py                          # default model, 8 patches, samples=10
    python benchmarks/bench_sampling.py --patches 4 --repeats 1  # quicker
    python benchmarks/bench_sampling.py --model tiny --steps 4   # smoke run
    python benchmarks/bench_sampling.py --accessor 96            # issue 13 item 4: through the accessor

Prints seconds per 32x32 LR patch (samples=10, the model's 10 steps) of
(1) the per-patch path the kernel used before the batched kernel: every patch's samples as a
    batch of their own, contiguous (NCHW) weights, ``torch.no_grad`` (re-implemented here from the
    pieces of the model, so that both paths run on the same machine in the same process);
(2) the engine's path, ``SRModel.sample_summary`` (what ``_kernel.run_patches`` calls): all the
    block's (patch, sample) latents through the networks in fixed-size batches, channels_last,
    ``torch.inference_mode``, samples reduced as they are drawn;
(3) the engine's path with ``dtype="bfloat16"`` (denoiser and decoder; fast on CPUs with AMX);
and the largest |difference| of the first two paths' SR means (same seeds: the same noise, so only float
rounding differs) beside the mean sample std, and the PSNR of both against the synthetic HR scenes.
Threads: ``--threads`` (default 1, as a dask task runs). Note the machine load beside the figures.

``--accessor N`` instead times ``.opensr.superresolve(samples)`` end to end on an N x N LR cube
(``testing.s2_cube(N, N, seed=5)``, the default scheduler, after a warm-up), float32 and
``dtype="bfloat16"`` in the same run, and prints seconds per patch of the accessor's patch grid and
the mean |bf16 - fp32| of ``sr`` (issue 13, item 4: goal <= 0.6 s per patch), and whether this CPU
has native bf16 (the ``amx_bf16`` / ``avx512_bf16`` flags of /proc/cpuinfo).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch

import xr_opensr
from xr_opensr import metrics as M
from xr_opensr.models.diffusion import DDIMSampler
from xr_opensr.models.pipeline import item_generator, match_histograms
from xr_opensr.testing import synthetic_scene


def scenes(n: int, size: int = 128, first_seed: int = 3_000_000) -> tuple[np.ndarray, np.ndarray]:
    """(HR (n, 4, size, size), LR (n, 4, size/4, size/4)) synthetic reflectance pairs (area-mean LR)."""
    hr = np.stack([synthetic_scene((size, size), seed=first_seed + i) for i in range(n)]).astype(np.float32)
    lr = np.asarray(M.area_downsample(M.gaussian_filter(hr, 1.7), 4), dtype=np.float32)
    return hr, lr


@torch.no_grad()
def per_patch(net, lr: np.ndarray, samples: int, steps: int, seeds: list[int]) -> np.ndarray:
    """The previous kernel path: (N, 2, C, H, W) mean and std, one patch at a time."""
    cfg = net.config
    out = []
    for i in range(lr.shape[0]):
        x = torch.from_numpy(lr[i : i + 1])
        cond = net.encode_condition(net.normalize(x)).mean.repeat(samples, 1, 1, 1)
        gens = [item_generator(seeds[i], j) for j in range(samples)]
        sampler = DDIMSampler(net.schedule, steps, cfg.sampler.eta, cfg.sampler.temperature)
        z = sampler.sample(lambda x_t, t, cond=cond: net.denoiser(torch.cat([x_t, cond], dim=1), t), tuple(cond.shape), gens,
                           torch.device("cpu"))
        hr = net.denormalize(net.autoencoder.decode(z)).numpy()
        for j in range(samples):
            for band in range(hr.shape[1]):
                hr[j, band] = match_histograms(hr[j, band], lr[i, band])
        hr = np.maximum(net.apply_consistency(hr[None], lr[i : i + 1])[0], 0.0)
        out.append(np.stack(net.summarize(hr[None]), axis=1)[0])
    return np.stack(out)


def native_bf16_flags() -> list[str]:
    """The native-bf16 CPU flags of this machine (Linux /proc/cpuinfo; empty elsewhere)."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return []
    return sorted({f for f in flags if f in ("amx_bf16", "avx512_bf16")})


def through_accessor(args) -> None:
    """Item 4 of issue 13: seconds per patch through the accessor, float32 vs bfloat16, same run."""
    from xr_opensr import testing
    from xr_opensr._graph import PatchGrid

    cube = testing.s2_cube(args.accessor, args.accessor, seed=5)
    cfg = xr_opensr.load_model(args.model, device="cpu").config
    n = PatchGrid(args.accessor, args.accessor, cfg.patch_size, cfg.default_overlap).n_patches
    kw = {"model": args.model, "steps": args.steps, "threads": args.threads}
    cube[:, :40, :40].opensr.superresolve(2, **kw, dtype="bfloat16").compute()  # warm-up: both loaded
    cube[:, :40, :40].opensr.superresolve(2, **kw).compute()
    times, means = {}, {}
    for _ in range(args.repeats):  # interleaved, so that a change in the machine's load hits both
        for dtype in (None, "bfloat16"):
            t0 = time.perf_counter()
            means[dtype] = cube.opensr.superresolve(args.samples, **kw, dtype=dtype).sr.values
            times.setdefault(dtype, []).append(time.perf_counter() - t0)
    print(f"model {args.model}, {args.accessor}^2 LR cube through the accessor ({n} patches), samples={args.samples}, "
          f"steps={args.steps or cfg.sampler.steps}, threads {args.threads}, {os.cpu_count()} cores, default scheduler, "
          f"load {os.getloadavg()[0]:.2f}, native bf16 flags {native_bf16_flags() or 'none'}")
    for dtype, label in ((None, "float32 (default)"), ("bfloat16", 'dtype="bfloat16"')):
        print(f"    {label:18s} {min(times[dtype]) / n:.3f} s per patch (runs: "
              + ", ".join(f"{t / n:.3f}" for t in times[dtype]) + ")")
    print(f"    mean |bf16 - fp32| of sr {np.nanmean(np.abs(means['bfloat16'] - means[None])):.2e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--patches", type=int, default=8)
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2, help="best of this many runs of each path")
    parser.add_argument("--accessor", type=int, default=None, metavar="N",
                        help="time the accessor on an N x N LR cube instead (float32 and bfloat16)")
    args = parser.parse_args()
    if args.accessor:
        through_accessor(args)
        return
    torch.set_num_threads(args.threads)
    # the diffusion model (model v2: its diffusion part); ``old`` keeps contiguous weights, as before
    old, new, low = (getattr(m, "diffusion", m) for m in (
        xr_opensr.load_model(args.model, device="cpu"), xr_opensr.load_model(args.model, device="cpu"),
        xr_opensr.load_model(args.model, device="cpu", dtype="bfloat16")))
    steps = args.steps or new.config.sampler.steps
    size = 4 * new.config.patch_size
    hr, lr = scenes(args.patches, size)
    seeds = list(range(args.patches))
    new.sample_summary(lr[:1], samples=2, steps=1)  # warm-up (and channels_last)
    per_patch(old, lr[:1], 2, 1, [0])
    low.sample_summary(lr[:1], samples=2, steps=1)
    t_old, t_new, t_low = [], [], []
    for _ in range(args.repeats):  # interleaved, so that a change in the machine's load hits both
        t0 = time.perf_counter()
        a = per_patch(old, lr, args.samples, steps, seeds)
        t_old.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        b = new.sample_summary(lr, samples=args.samples, steps=steps, seed=seeds)
        t_new.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        c = low.sample_summary(lr, samples=args.samples, steps=steps, seed=seeds)
        t_low.append(time.perf_counter() - t0)
    n = args.patches
    print(f"model {args.model}, {n} patches of {new.config.patch_size}^2 LR, samples={args.samples}, steps={steps}, "
          f"threads {args.threads}, load {os.getloadavg()[0]:.2f}")
    print(f"per-patch path (before): {min(t_old) / n:.3f} s per patch")
    print(f"batched engine path:     {min(t_new) / n:.3f} s per patch  (speed-up {min(t_old) / min(t_new):.2f}x)")
    print(f"max |mean_before - mean_batched| {np.abs(a[:, 0] - b[:, 0]).max():.2e} (mean sample std "
          f"{b[:, 1].mean() / new.config.std_scale:.2e}); PSNR before {M.psnr(a[:, 0], hr):.4f} dB, "
          f"batched {M.psnr(b[:, 0], hr):.4f} dB, bicubic {M.psnr(M.bicubic_upsample(lr, 4), hr):.4f} dB")
    print(f"batched engine path, bfloat16: {min(t_low) / n:.3f} s per patch  (speed-up {min(t_old) / min(t_low):.2f}x), "
          f"PSNR {M.psnr(c[:, 0], hr):.4f} dB, mean |bf16 - fp32| {np.abs(c[:, 0] - b[:, 0]).mean():.2e}")


if __name__ == "__main__":
    main()
