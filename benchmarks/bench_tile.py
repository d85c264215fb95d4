"""The dask layer at scale: a whole Sentinel-2 tile, a large cube streamed to Zarr, the default model.

    python benchmarks/bench_tile.py --only sum            # 10980^2 LR tile (lazy) -> sum, model "bicubic"
    python benchmarks/bench_tile.py --only zarr           # 4096^2 LR cube -> compressed Zarr, "bicubic"
    python benchmarks/bench_tile.py --only model --model-size 1024   # the default model, samples=10
    python benchmarks/bench_tile.py --only sum,zarr --tile 2048      # quicker
    python benchmarks/bench_tile.py --only tile4,tile10               # issue 22: a whole 10980^2 tile, the
        # default model at samples=10 -> sr + uncertainty in a compressed Zarr (four bands; all ten bands)
    python benchmarks/bench_tile.py --only tile4 --tile 2048 --dtype uint16   # a part of it, uint16 DN
    python benchmarks/bench_tile.py --only tile4 --tile 2048 --tiling crop    # the crop tiling

Every part runs in a fresh subprocess and prints its wall time, the number of tasks of the graph,
and the process's peak RSS (VmHWM): the cost of the dask layer itself when the kernel is cheap
(``model="bicubic"``, see :mod:`xr_opensr.models.baselines`), and of the whole pipeline with the
default model. The input is a lazy synthetic uint16 cube generated chunk by chunk where it is used
(``bench_accessor.s2_cube``), so reading costs nothing. Goals (issue 13, item 6c): peak RSS < 4 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import xarray as xr
from bench_accessor import _peak_rss_mb, s2_cube

import xr_opensr  # noqa: F401  (registers .opensr)
from xr_opensr.sentinel2 import GUIDED_BANDS, MODEL_BANDS


def _block20(block_id: tuple, size: int, chunk: int, seed: int) -> np.ndarray:
    """One (6, h, w) uint16 chunk of the six 20 m bands: made at 20 m, each pixel a 2 x 2 block on the
    20 m grid (chunks start at even pixels of a grid whose origin is a multiple of 20 m)."""
    i, j = block_id[1], block_id[2]
    y0, x0 = i * chunk, j * chunk
    h, w = min(chunk, size - y0), min(chunk, size - x0)
    yy, xx = np.meshgrid(np.arange(y0 // 2, (y0 + h + 1) // 2), np.arange(x0 // 2, (x0 + w + 1) // 2), indexing="ij")
    rng = np.random.default_rng([seed, 20, i, j])
    base = 0.18 + 0.07 * np.sin(yy / 19.0)[None] * np.cos(xx / 11.0)[None]
    gain = np.array([1.1, 1.5, 1.7, 1.8, 1.2, 0.8])[:, None, None]
    refl = np.clip(base * gain + rng.normal(0, 0.01, (6, *yy.shape)), 0.02, 0.6)
    return np.round(refl * 10000).astype(np.uint16).repeat(2, axis=1).repeat(2, axis=2)[:, :h, :w]


def ten_band_cube(size: int, chunk: int, seed: int = 0) -> xr.DataArray:
    """The four-band lazy cube of :func:`bench_accessor.s2_cube` plus the six 20 m bands on the 10 m grid."""
    four = s2_cube(size, chunk=chunk, seed=seed)
    chunks = ((6,), *four.data.chunks[1:])
    data20 = da.map_blocks(lambda block_id=None: _block20(block_id, size, chunk, seed), chunks=chunks,
                           dtype=np.uint16, meta=np.empty((0, 0, 0), np.uint16))
    data = da.concatenate([four.data, data20], axis=0)
    out = xr.DataArray(data, dims=four.dims, coords={**four.coords, "band": [*MODEL_BANDS, *GUIDED_BANDS]},
                       attrs=four.attrs)
    return out.rio.write_crs(four.rio.crs).rio.write_transform(four.rio.transform())


def _tile(part: str, size: int, samples: int, chunk: int, out: str, dtype: str | None, tiling: str) -> dict:
    """A whole tile: the default model, ``samples``, sr + uncertainty to a compressed Zarr (zstd)."""
    ten = part == "tile10"
    cube = ten_band_cube(size, chunk) if ten else s2_cube(size, chunk=chunk)
    t0 = time.perf_counter()
    ds = cube.opensr.superresolve(samples, bands="all" if ten else None, output_dtype=dtype, tiling=tiling)
    build = time.perf_counter() - t0
    tasks = len(ds.__dask_graph__())
    t0 = time.perf_counter()
    with dask.config.set(scheduler="threads"):
        ds[["sr", "uncertainty"]].to_zarr(out, mode="w")
    wall = time.perf_counter() - t0
    disk = sum(p.stat().st_size for p in Path(out).rglob("*") if p.is_file()) / 2**20
    return {"part": part, "size": size, "model": "default", "samples": samples, "build_s": build,
            "compute_s": wall, "tasks": tasks, "peak_rss_mb": _peak_rss_mb(), "value": disk,
            "bands": int(cube.sizes["band"]), "dtype": dtype or "float32", "tiling": tiling}


def _child(part: str, size: int, model: str, samples: int, chunk: int, out: str | None,
           dtype: str | None = None, tiling: str = "blend") -> dict:
    if part.startswith("tile"):
        return _tile(part, size, samples, chunk, out, dtype, tiling)
    cube = s2_cube(size, chunk=chunk)
    t0 = time.perf_counter()
    ds = cube.opensr.superresolve(samples, model=model)
    build = time.perf_counter() - t0
    tasks = len(ds.sr.data.__dask_graph__())
    t0 = time.perf_counter()
    with dask.config.set(scheduler="threads"):
        if part == "zarr":
            ds.to_zarr(out, mode="w")  # zarr's default codec compresses (zstd)
            value = sum(p.stat().st_size for p in Path(out).rglob("*") if p.is_file()) / 2**20
        else:
            value = float(ds.sr.sum().compute())
    return {"part": part, "size": size, "model": model, "samples": samples, "build_s": build,
            "compute_s": time.perf_counter() - t0, "tasks": tasks, "peak_rss_mb": _peak_rss_mb(), "value": value}


def run_part(part: str, size: int, model: str, samples: int, chunk: int, timeout: float,
             dtype: str | None = None, tiling: str = "blend") -> dict | None:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, __file__, "--_child", part, "--size", str(size), "--model", model,
               "--samples", str(samples), "--chunk", str(chunk), "--out", str(Path(tmp) / "sr.zarr")]
        cmd += (["--dtype", dtype] if dtype else []) + ["--tiling", tiling]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=True)
        except subprocess.TimeoutExpired:
            print(f"    {part}: did not finish within {timeout:.0f} s")
            return None
        return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="sum,zarr,model")
    parser.add_argument("--tile", type=int, default=10980, help="LR pixels per side of the tile (sum)")
    parser.add_argument("--zarr-size", type=int, default=4096)
    parser.add_argument("--model-size", type=int, default=1024)
    parser.add_argument("--model", default="default", help="model of the 'model' part")
    parser.add_argument("--samples", type=int, default=10, help="samples of the 'model' part")
    parser.add_argument("--chunk", type=int, default=1024, help="input chunk side (LR pixels)")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per part")
    parser.add_argument("--dtype", default=None, help="output_dtype of the tile parts (None: float32; uint16)")
    parser.add_argument("--tiling", default="blend", choices=("blend", "crop"), help="tiling of the tile parts")
    parser.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._child:
        print(json.dumps(_child(args._child, args.size, args.model, args.samples, args.chunk, args.out, args.dtype,
                                args.tiling)))
        return
    print(f"bench_tile: {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}, dask {dask.__version__}")
    parts = {"sum": (args.tile, "bicubic", 1), "zarr": (args.zarr_size, "bicubic", 1),
             "model": (args.model_size, args.model, args.samples),
             "tile4": (args.tile, "default", args.samples), "tile10": (args.tile, "default", args.samples)}
    for part in args.only.split(","):
        size, model, samples = parts[part]
        r = run_part(part, size, model, samples, args.chunk, args.timeout, args.dtype, args.tiling)
        if r is None:
            continue
        what = f"{r['value']:.1f} MiB on disk" if part in ("zarr", "tile4", "tile10") else f"sum {r['value']:.6g}"
        print(f"  {part:5s} {size}^2 LR, model {model}, samples={samples}, tiling {r.get('tiling', '-')}: graph {r['build_s']:.1f} s, "
              f"{r['tasks']:,} tasks, compute {r['compute_s']:.1f} s, peak RSS {r['peak_rss_mb']:.0f} MB "
              f"(goal < 4096), {what}; load {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
