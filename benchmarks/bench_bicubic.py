"""The bicubic kernel alone: ``xr_opensr.sensor.bicubic_upsample`` vs its previous implementation.

    python benchmarks/bench_bicubic.py

The previous implementation (4 gathers of clipped indices per axis, summed tap by tap) is kept as the
oracle of ``tests/test_sensor.py`` (``_bicubic_oracle``). Prints milliseconds per 32x32 LR patch
(4 bands) for stacks of 1, 25 (a block of the accessor) and 100 patches, and seconds for one
4 x 1024^2 image, best of several runs, with the largest difference of the outputs.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from test_sensor import _bicubic_oracle  # noqa: E402

from xr_opensr.sensor import bicubic_upsample  # noqa: E402


def best(fn, x, repeats: int) -> float:
    fn(x)
    out = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn(x)
        out = min(out, time.perf_counter() - start)
    return out


def main() -> None:
    rng = np.random.default_rng(0)
    print(f"bicubic_upsample vs the previous implementation; load {os.getloadavg()[0]:.2f}")
    for n in (1, 25, 100):
        x = rng.random((n, 4, 32, 32), dtype=np.float32) * 0.5
        old, new = best(_bicubic_oracle, x, 20), best(bicubic_upsample, x, 20)
        diff = np.abs(bicubic_upsample(x) - _bicubic_oracle(x)).max()
        print(f"  {n:4d} patches: previous {1e3 * old / n:.3f} ms/patch, new {1e3 * new / n:.3f} ms/patch "
              f"({old / new:.1f}x), max |diff| {diff:.1e}")
    x = rng.random((4, 1024, 1024), dtype=np.float32) * 0.5
    old, new = best(_bicubic_oracle, x, 3), best(bicubic_upsample, x, 3)
    print(f"  one (4, 1024, 1024) image: previous {old:.3f} s, new {new:.3f} s ({old / new:.1f}x)")


if __name__ == "__main__":
    main()
