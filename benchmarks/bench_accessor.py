"""Speed and memory of the ``.opensr`` accessor (the dask layer), printed as ratios.

    python benchmarks/bench_accessor.py                        # all four, small sizes (a few minutes)
    python benchmarks/bench_accessor.py --only a,d --size 128  # pick parts, bigger cube
    python benchmarks/bench_accessor.py --only c --rss-sizes 512 2048   # the memory goal (~20 min on 2 CPUs)

(a) overhead   accessor end to end (numpy cube -> computed Dataset) / the raw kernel over the same
               patches. Like for like: the sync scheduler vs the kernel alone, both one torch thread
               (goal <= 1.10); and the threaded scheduler vs one ``model.run`` call using all cores.
(b) opensr-utils  GeoTIFF -> super-resolved GeoTIFF with ``opensr_utils.large_file_processing`` vs
               ``rioxarray.open_rasterio(...).opensr.superresolve(...).sr.rio.to_raster(...)``, same
               model (wrapped as an nn.Module), window and overlap (goal >= 3x faster); prints the
               difference of the outputs next to our own seed-to-seed difference (the noise floor).
               Ours is written three ways: float32 DEFLATE with GDAL's default 256 px tiles (they
               straddle the dask blocks, so GDAL re-reads and re-compresses tiles), float32 DEFLATE
               with tiles that divide the blocks, and uint16 DN uncompressed (``output_dtype="uint16"``:
               the product opensr-utils itself writes, uint16 DN, nodata 0, no compression).
               Needs ``pip install --no-deps opensr-utils`` (plus pytorch-lightning, einops, omegaconf).
(c) memory     peak RSS (VmHWM) of a subprocess streaming an n x n LR cube (lazy, generated per
               chunk) to Zarr, for two sizes (goal: < 20 % growth for 512 -> 2048).
(d) cluster    threaded scheduler vs ``LocalCluster(processes=True)`` (models already loaded).

All timings use the seeded ``tiny`` model unless ``--model`` says otherwise; they measure the
machinery, not super-resolution quality. With ``--model bicubic`` (a numpy baseline through the same
pipeline, :mod:`xr_opensr.models.baselines`) the kernel is cheap and (a) and (b) measure the dask
layer's own cost (issue 13, item 6: goals (a) <= 1.5, (b) >= 3x at 1024^2):

    python benchmarks/bench_accessor.py --only a --model bicubic --size 512 --repeats 3
    python benchmarks/bench_accessor.py --only b --model bicubic --utils-size 1024
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pandas as pd
import rioxarray
import xarray as xr
from affine import Affine

import xr_opensr  # noqa: F401
import xr_opensr.accessor  # noqa: F401  (registers .opensr)
from xr_opensr import _graph, _kernel, _runtime
from xr_opensr.models.base import SampleOptions

CRS = "EPSG:32633"
X0, Y0 = 500_000.0, 5_000_000.0
BANDS = ("B04", "B03", "B02", "B08")


# --------------------------------------------------------------------------- data


def _block(block_id: tuple, size: int, chunk: int, seed: int) -> np.ndarray:
    """One (4, h, w) uint16 chunk of a seeded S2-like scene (smooth field + texture)."""
    i, j = block_id[1], block_id[2]
    y0, x0 = i * chunk, j * chunk
    h, w = min(chunk, size - y0), min(chunk, size - x0)
    yy, xx = np.meshgrid(np.arange(y0, y0 + h), np.arange(x0, x0 + w), indexing="ij")
    rng = np.random.default_rng([seed, i, j])
    base = 0.15 + 0.08 * np.sin(yy / 37.0)[None] * np.cos(xx / 23.0)[None]
    gain = np.array([0.8, 1.0, 1.1, 2.0])[:, None, None]
    refl = np.clip(base * gain + rng.normal(0, 0.02, (4, h, w)), 0.02, 0.5)
    return np.round(refl * 10000).astype(np.uint16)


def s2_cube(size: int, chunk: int = 256, seed: int = 0, lazy: bool = True) -> xr.DataArray:
    """(band, y, x) uint16 DN cube on a 10 m UTM grid; lazy: generated chunk by chunk."""
    chunks = ((4,), *(((chunk,) * (size // chunk) + ((size % chunk,) if size % chunk else ())),) * 2)
    data = da.map_blocks(lambda block_id=None: _block(block_id, size, chunk, seed),
                         chunks=chunks, dtype=np.uint16, meta=np.empty((0, 0, 0), np.uint16))
    if not lazy:
        data = data.compute()
    arr = xr.DataArray(
        data, dims=("band", "y", "x"),
        coords={"band": list(BANDS), "y": Y0 - 10 * (np.arange(size) + 0.5), "x": X0 + 10 * (np.arange(size) + 0.5)},
    )
    arr.attrs["nodata"] = 0
    return arr.rio.write_crs(CRS).rio.write_transform(Affine(10, 0, X0, 0, -10, Y0))


def _timed(fn, repeats: int = 1) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


# --------------------------------------------------------------------------- (a) overhead


def _grid_patches(refl: np.ndarray, patch: int, overlap: int):
    """All patches of the accessor's grid, padded, and their seeds (as the graph makes them)."""
    c, h, w = refl.shape
    grid = _graph.PatchGrid(h, w, patch, overlap)
    s = grid.stride
    patches, seeds = [], []
    for i in range(grid.rows):
        for j in range(grid.cols):
            sub = refl[:, i * s : min(i * s + patch, h), j * s : min(j * s + patch, w)]
            patches.append(_graph._pad_patch(sub, patch))
            seeds.append(_graph.patch_seed(0, 0, i, j))
    return np.stack(patches).astype(np.float32), np.asarray(seeds, dtype=np.uint64)


def bench_overhead(args) -> None:
    import torch

    cube = s2_cube(args.size, lazy=False)
    kw = {"model": args.model, "steps": args.steps}
    cube.opensr.superresolve(args.samples, **kw).compute()  # warm-up: model loaded and cached
    cfg = _runtime.get_model(_runtime.ModelRef(model=args.model)).info
    refl = cube.values.astype(np.float64) * 1e-4
    patches, seeds = _grid_patches(refl, cfg.patch, cfg.overlap)
    spec = _runtime.ModelSpec(_runtime.ModelRef(model=args.model), SampleOptions(samples=args.samples, steps=args.steps))
    net = _runtime.get_model(spec)

    raw_1 = _timed(lambda: _kernel.run_patches(spec, patches, seeds), args.repeats)
    acc_sync = _timed(lambda: cube.opensr.superresolve(args.samples, **kw).compute(scheduler="sync"), args.repeats)

    def raw_all_cores():
        net.run(patches, np.asarray(seeds, dtype=np.uint64), spec.options)

    raw_n = _timed(raw_all_cores, args.repeats)
    acc_threads = _timed(lambda: cube.opensr.superresolve(args.samples, **kw).compute(scheduler="threads"),
                         args.repeats)
    print(f"\n(a) overhead  {args.size}x{args.size} LR, {len(patches)} patches of {cfg.patch} px, "
          f"samples={args.samples}, steps={args.steps}, {os.cpu_count()} cores, torch {torch.__version__}")
    print(f"    raw kernel, 1 thread          {raw_1:8.2f} s")
    print(f"    accessor, sync scheduler      {acc_sync:8.2f} s   ratio {acc_sync / raw_1:.3f}  (goal <= 1.10)")
    print(f"    raw model.run, all cores      {raw_n:8.2f} s")
    print(f"    accessor, threads scheduler   {acc_threads:8.2f} s   ratio {acc_threads / raw_n:.3f}")


# --------------------------------------------------------------------------- (b) opensr-utils


def bench_opensr_utils(args) -> None:
    import torch

    try:
        from opensr_utils.pipeline import large_file_processing
    except ImportError as err:
        print(f"\n(b) skipped: opensr-utils is not importable ({err}); "
              "pip install --no-deps opensr-utils pytorch-lightning einops omegaconf")
        return
    net = _runtime.get_model(_runtime.ModelRef(model=args.model))
    cfg = net.info
    samples, steps = args.samples, args.steps

    class Adapter(torch.nn.Module):
        """Our model for opensr-utils: (B, 4, h, w) reflectance in [0, 1] -> its mean."""

        factor = cfg.scale

        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, x):
            out = self.net.run(x.detach().cpu().float().numpy(), np.arange(x.shape[0], dtype=np.uint64),
                               SampleOptions(samples=samples, steps=steps))
            return torch.from_numpy(out[:, 0])

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        lr_path = tmp / "input" / "lr.tif"
        lr_path.parent.mkdir()
        cube = s2_cube(args.utils_size, lazy=False)
        tif = cube.assign_coords(band=[1, 2, 3, 4])
        tif.attrs["long_name"] = BANDS
        tif.rio.write_nodata(0).rio.to_raster(lr_path, tiled=True)

        def ours(variant: str = "float32-deflate-256"):
            """GeoTIFF -> GeoTIFF through the accessor. Variants: float32 DEFLATE with GDAL's 256 px
            tiles (tiles straddle the dask blocks, so GDAL re-reads and re-compresses them), float32
            DEFLATE with tiles that divide the blocks, and uint16 DN uncompressed (opensr-utils'
            own product: uint16 DN, nodata 0, no compression)."""
            lr = rioxarray.open_rasterio(lr_path, chunks={"x": 256, "y": 256})
            dn = variant.startswith("uint16")
            sr = lr.opensr.superresolve(samples, model=args.model, steps=steps,
                                        output_dtype="uint16" if dn else None).sr
            tile = 256 if variant.endswith("-256") else _aligned_tile(sr.chunks[-1])
            compress = {"compress": "DEFLATE"} if "deflate" in variant else {}
            sr.rio.to_raster(tmp / f"ours-{variant}.tif", tiled=True, blockxsize=tile, blockysize=tile,
                             lock=threading.Lock(), **compress)

        def theirs():
            quiet = io.StringIO()
            logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
            logging.getLogger("lightning").setLevel(logging.ERROR)
            with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
                with large_file_processing(
                    root=str(lr_path), model=Adapter(), window_size=(cfg.patch, cfg.patch),
                    overlap=cfg.overlap, device="cpu", output_path=str(tmp / "theirs.tif"),
                    overwrite=True, batch_size=16,
                ) as runner:
                    runner.run()

        variants = ("float32-deflate-256", "float32-deflate-aligned", "uint16-none-aligned")
        ours()  # warm-up (model cached, imports)
        t_ours = {v: _timed(lambda v=v: ours(v), args.repeats) for v in variants}
        t_theirs = _timed(theirs, args.repeats)
        other = rioxarray.open_rasterio(tmp / "theirs.tif").values.astype(np.float64) / 10000
        lr = rioxarray.open_rasterio(lr_path, chunks={"x": 256, "y": 256})
        seed1 = lr.opensr.superresolve(samples, model=args.model, steps=steps, seed=1).sr.values
        print(f"\n(b) vs opensr-utils large_file_processing  {args.utils_size}x{args.utils_size} LR GeoTIFF, window "
              f"{cfg.patch}, overlap {cfg.overlap}, samples={samples}, steps={steps}, model {args.model}")
        print(f"    opensr-utils (uint16 DN, uncompressed)      {t_theirs:8.2f} s")
        for v in variants:
            path = tmp / f"ours-{v}.tif"
            mine = rioxarray.open_rasterio(path).values.astype(np.float64)
            if v.startswith("uint16"):
                mine = np.where(mine == 0, np.nan, mine / 10000)
            diff = np.abs(mine - other)
            print(f"    accessor, {v:24s}          {t_ours[v]:8.2f} s   speed-up {t_theirs / t_ours[v]:.2f}x  "
                  f"(goal >= 3)   {path.stat().st_size / 1e6:6.1f} MB   |ours - theirs| mean {np.nanmean(diff):.5f}, "
                  f"max {np.nanmax(diff):.4f}")
        mine = rioxarray.open_rasterio(tmp / f"ours-{variants[0]}.tif").values.astype(np.float64)
        print(f"    |ours seed 0 - ours seed 1| mean {np.abs(mine - seed1).mean():.5f} (the sampling-noise floor; "
              "theirs is uint16 DN / 10000)")


def _aligned_tile(chunks: tuple[int, ...], largest: int = 512) -> int:
    """The largest GeoTIFF tile side (a multiple of 16, at most ``largest``) that divides the first
    chunk, so that each dask block writes whole tiles (GDAL then compresses each tile once)."""
    first = chunks[0]
    fits = [t for t in range(16, min(largest, first) + 1, 16) if first % t == 0]
    return fits[-1] if fits else 256


# --------------------------------------------------------------------------- (c) memory


def _peak_rss_mb() -> float:
    """This process's peak RSS. Linux: VmHWM of /proc/self/status, because getrusage's ru_maxrss
    keeps the parent's peak across fork + exec (a child of a big process would report that)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _rss_child(size: int, out: str, model: str, chunk: int) -> None:
    cube = s2_cube(size, chunk=chunk)
    ds = cube.opensr.superresolve(1, model=model, steps=1)
    with dask.config.set(scheduler="threads"):
        ds.to_zarr(out, mode="w")
    print(json.dumps({"size": size, "maxrss_mb": _peak_rss_mb(),
                      "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def bench_memory(args) -> None:
    results = []
    for size in args.rss_sizes:
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            proc = subprocess.run(
                [sys.executable, __file__, "--_rss-child", str(size), "--model", args.model, "--out",
                 str(Path(tmp) / "sr.zarr")],
                capture_output=True, text=True, check=True,
            )
            result = json.loads(proc.stdout.strip().splitlines()[-1])
            result["seconds"] = time.perf_counter() - start
            results.append(result)
    print(f"\n(c) peak RSS streaming to Zarr (samples=1, steps=1, {args.model}; threads scheduler)")
    for r in results:
        print(f"    {r['size']:5d}^2 LR -> {4 * r['size']}^2 HR   peak RSS {r['maxrss_mb']:8.1f} MB   ({r['seconds']:.0f} s)")
    growth = results[-1]["maxrss_mb"] / results[0]["maxrss_mb"] - 1
    print(f"    growth {results[0]['size']} -> {results[-1]['size']}: {100 * growth:+.1f} %  (goal < 20 %)")


# --------------------------------------------------------------------------- (d) cluster


def bench_cluster(args) -> None:
    from distributed import Client, LocalCluster

    cube = s2_cube(args.size, chunk=max(32, args.size // 4))  # lazy: chunks generated where they run
    kw = {"model": args.model, "steps": args.steps}
    ds = cube.opensr.superresolve(args.samples, **kw)
    ds.compute(scheduler="threads")
    t_threads = _timed(lambda: ds.compute(scheduler="threads"), args.repeats)
    results = {}
    # distributed's nannies set MALLOC_TRIM_THRESHOLD_=65536 in their workers, which makes small
    # torch/numpy allocations slow (about 1.6x on the tiny model); measured with and without
    for label, trim in (("default nanny env", None), ("MALLOC_TRIM_THRESHOLD_=128 MiB", str(128 * 2**20))):
        config = {} if trim is None else {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": trim}
        with dask.config.set(config), LocalCluster(
            n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=None,
            silence_logs=logging.ERROR,
        ) as cluster, Client(cluster) as client:
            client.compute(ds).result()  # warm-up: each worker loads the model once
            results[label] = (_timed(lambda client=client: client.compute(ds).result(), args.repeats),
                              sorted(client.run(_runtime.load_count).values()))
    print(f"\n(d) threads vs LocalCluster  {args.size}x{args.size} LR, {ds.sr.data.npartitions} blocks, "
          f"samples={args.samples}, steps={args.steps}")
    print(f"    threads ({os.cpu_count()} threads)                      {t_threads:8.2f} s")
    for label, (seconds, loads) in results.items():
        print(f"    LocalCluster ({args.workers} procs x 1 thread), {label:30s} {seconds:8.2f} s   "
              f"cluster/threads {seconds / t_threads:.2f}   model loads per worker {loads}")


# --------------------------------------------------------------------------- main


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="a,b,c,d", help="parts to run, e.g. 'a,d'")
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--size", type=int, default=96, help="LR pixels per side for (a) and (d)")
    parser.add_argument("--utils-size", type=int, default=192, help="LR pixels per side for (b)")
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1, help="best of N timings")
    parser.add_argument("--rss-sizes", type=int, nargs=2, default=[128, 512], metavar=("SMALL", "LARGE"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--_rss-child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._rss_child is not None:
        _rss_child(args._rss_child, args.out, args.model, chunk=256)
        return
    parts = set(args.only.split(","))
    print(f"xr-opensr accessor benchmark; pandas {pd.__version__}, dask {dask.__version__}")
    for key, fn in (("a", bench_overhead), ("b", bench_opensr_utils), ("c", bench_memory), ("d", bench_cluster)):
        if key in parts:
            fn(args)


if __name__ == "__main__":
    main()
