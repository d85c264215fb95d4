"""Time of the ten-band path against the four-band path on the same cube (issue 14, goal: at most +50 %).

    python benchmarks/bench_bands.py                                   # 96 x 96 px, default models
    python benchmarks/bench_bands.py --size 256 --samples 10 --repeats 3
    python benchmarks/bench_bands.py --model tiny --model20 /path/to/model-folder   # other models

One synthetic ten-band cube (``xr_opensr.testing.s2_cube``: B04, B03, B02, B08 at 10 m; B05, B06, B07,
B8A, B11, B12 made at 20 m and put on the 10 m grid by nearest neighbour), dask-backed; the same call
``cube.opensr.superresolve(samples, ...)`` with ``bands=None`` (the four 10 m bands: the diffusion model)
and ``bands="all"`` (also the six 20 m bands: the 20 m model after the diffusion model, in the same
patches), computed with the same scheduler. Both models are loaded by a warm-up run first; the two
paths run alternately ``--repeats`` times each, and each figure is the best of its runs. Prints the
wall and CPU times (of this process, all threads: other processes on the machine hardly change
them), their ratios and the time per patch (kernel patches counted by ``xr_opensr._kernel.kernel_stats``).
"""

from __future__ import annotations

import argparse
import time

import dask

import xr_opensr  # noqa: F401  (registers .opensr)
from xr_opensr._kernel import kernel_stats, reset_kernel_stats
from xr_opensr.sentinel2 import SR_BANDS
from xr_opensr.testing import s2_cube


def timed(run, scheduler: str) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds of this process: all its threads, patches run) of one compute."""
    reset_kernel_stats()
    wall, cpu = time.perf_counter(), time.process_time()
    run().compute(scheduler=scheduler)
    return time.perf_counter() - wall, time.process_time() - cpu, kernel_stats()["patches"]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=96, help="LR pixels per side (default: %(default)s)")
    p.add_argument("--chunks", type=int, default=64, help="LR pixels per dask block side (default: %(default)s)")
    p.add_argument("--samples", type=int, default=4, help="diffusion samples per patch (default: %(default)s)")
    p.add_argument("--steps", type=int, default=None, help="DDIM steps (default: the model's)")
    p.add_argument("--model", default="default", help="the 10 m model (default: %(default)s)")
    p.add_argument("--model20", default="s2-20m", help="the 20 m model (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=3, help="computes per path; the best counts (default: %(default)s)")
    p.add_argument("--scheduler", default="threads", choices=("threads", "sync"),
                   help="dask scheduler (default: %(default)s; one torch thread per task)")
    args = p.parse_args(argv)

    cube = s2_cube(args.size, args.size, bands=SR_BANDS, chunks={"y": args.chunks, "x": args.chunks})
    kw = dict(model=args.model, steps=args.steps, seed=0, model20=args.model20)

    def four():
        return cube.opensr.superresolve(args.samples, **kw)

    def ten():
        return cube.opensr.superresolve(args.samples, bands="all", **kw)

    small = cube.isel(y=slice(0, 16), x=slice(0, 16))
    small.opensr.superresolve(1, bands="all", **kw).compute(scheduler="sync")  # warm-up: both models loaded
    times: dict[str, list[tuple[float, float, int]]] = {"four": [], "ten": []}
    with dask.config.set(scheduler=args.scheduler):
        for _ in range(args.repeats):  # interleaved, so that a load change on the machine hits both alike
            times["four"].append(timed(four, args.scheduler))
            times["ten"].append(timed(ten, args.scheduler))
    t4, t10 = (min(w for w, _, _ in times[k]) for k in ("four", "ten"))
    cpu4, cpu10 = (min(c for _, c, _ in times[k]) for k in ("four", "ten"))
    patches = times["four"][0][2]
    ratio = t10 / t4
    print(f"cube {args.size} x {args.size} px, chunks {args.chunks}, model {args.model!r} ({args.samples} samples, "
          f"steps {args.steps or 'default'}), model20 {args.model20!r}, scheduler {args.scheduler}, "
          f"best of {args.repeats}")
    print(f"four bands (B04 B03 B02 B08):  {t4:8.2f} s wall  {cpu4:8.2f} s CPU")
    print(f"ten bands  (+ B05 ... B12):    {t10:8.2f} s wall  {cpu10:8.2f} s CPU")
    print(f"ratio ten / four: wall {ratio:.3f} ({100 * (ratio - 1):+.1f} %; goal <= 1.5), CPU {cpu10 / cpu4:.3f} "
          "(CPU time: hardly changed by other processes on the machine)")
    print(f"per patch ({patches} patches): four bands {1e3 * t4 / patches:.1f} ms wall {1e3 * cpu4 / patches:.1f} ms "
          f"CPU; the 20 m path adds {1e3 * (t10 - t4) / patches:.1f} ms wall {1e3 * (cpu10 - cpu4) / patches:.1f} ms CPU")
    print("all runs (wall s, CPU s): " + "; ".join(
        f"{k} " + ", ".join(f"({w:.2f}, {c:.2f})" for w, c, _ in times[k]) for k in ("four", "ten")))


if __name__ == "__main__":
    main()
