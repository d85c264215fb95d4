"""The shipped default model on a GPU: CUDA vs CPU agreement, reduced precision, batching ratio.

    python benchmarks/gpu_default_model.py          # needs a CUDA GPU

Prints the wall time of 8 synthetic 32x32 LR patches x 10 samples on the GPU and on the CPU, the
mean |difference| of their SR means (beside the mean sample std), the same for bf16/fp16 denoisers,
and samples=10 in one call / ten samples=1 calls on one patch (goal <= 0.3 on a GPU).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

import xr_opensr
from training.degradation import degrade
from xr_opensr import metrics as M
from xr_opensr.testing import synthetic_scene


def timed(fn: Callable[[], object]) -> tuple[object, float]:
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def main() -> None:
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU: this benchmark compares the GPU with the CPU")
    hr = np.stack([synthetic_scene((128, 128), seed=2_000_000 + i) for i in range(8)])
    lr = np.stack([degrade(h) for h in hr])
    seeds = list(range(len(lr)))
    cpu = xr_opensr.load_model("default", device="cpu")
    gpu = xr_opensr.load_model("default", device="cuda")
    s_cpu, t_cpu = timed(lambda: cpu.sample(lr, samples=10, seed=seeds))
    gpu.sample(lr[:1], samples=2, seed=0)  # warm-up
    s_gpu, t_gpu = timed(lambda: gpu.sample(lr, samples=10, seed=seeds))
    m_cpu, sd_cpu = cpu.summarize(s_cpu)
    m_gpu, _ = gpu.summarize(s_gpu)
    print(f"8 patches x 10 samples: cpu ({torch.get_num_threads()} threads) {t_cpu:.2f} s, cuda {t_gpu:.2f} s")
    print(f"mean |cuda - cpu| of the SR mean {np.abs(m_gpu - m_cpu).mean():.2e} (mean std {sd_cpu.mean():.2e}); "
          f"PSNR cpu {M.psnr(m_cpu, hr):.3f}, cuda {M.psnr(m_gpu, hr):.3f}, bicubic {M.psnr(M.bicubic_upsample(lr, 4), hr):.3f}")
    for dtype in ("bfloat16", "float16"):
        low = xr_opensr.load_model("default", device="cuda", dtype=dtype)
        s_low, t_low = timed(lambda low=low: low.sample(lr, samples=10, seed=seeds))
        m_low, _ = low.summarize(s_low)
        print(f"{dtype}: {t_low:.2f} s, mean |{dtype} - fp32| {np.abs(m_low - m_gpu).mean():.2e}, "
              f"PSNR {M.psnr(m_low, hr):.3f}")
    one = lr[:1]
    _, batched = timed(lambda: gpu.sample(one, samples=10, seed=0))
    _, looped = timed(lambda: [gpu.sample(one, samples=1, seed=k) for k in range(10)])
    print(f"one 32x32 LR patch: samples=10 {batched * 1e3:.0f} ms, 10 x samples=1 {looped * 1e3:.0f} ms, "
          f"ratio {batched / looped:.2f}")


if __name__ == "__main__":
    main()
