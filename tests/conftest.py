"""Shared fixtures: small georeferenced Sentinel-2-like cubes built in code, dask helpers."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import dask
import numpy as np
import pandas as pd
import pytest
import rioxarray  # noqa: F401  (registers .rio)
import xarray as xr

pytest_plugins = ["conftest_stac"]  # the real STAC API server fixture (stac_api)

CRS = "EPSG:32633"  # UTM 33N
X0, Y0 = 500_000.0, 5_000_000.0
S2_BANDS = ("B02", "B03", "B04", "B08")


def make_scene(height: int, width: int, bands: int = 4, times: int = 0, seed: int = 0) -> np.ndarray:
    """Seeded smooth S2-like reflectance in [0.02, 0.5]: (*times, bands, height, width) float32."""
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.linspace(0, 1, height), np.linspace(0, 1, width), indexing="ij")
    shape = (max(times, 1), bands)
    phase = rng.uniform(0, 2 * np.pi, shape + (2,))
    base = 0.15 + 0.08 * np.sin(6 * yy + phase[..., 0, None, None]) * np.cos(5 * xx + phase[..., 1, None, None])
    texture = rng.normal(0, 0.02, shape + (height, width))
    band_gain = np.array([0.8, 1.0, 1.1, 2.0][:bands] + [1.0] * max(0, bands - 4))[None, :, None, None]
    out = np.clip(base * band_gain + texture, 0.02, 0.5).astype(np.float32)
    return out if times else out[0]


def make_cube(
    height: int = 24,
    width: int = 20,
    *,
    times: int = 0,
    bands: Sequence[str] = S2_BANDS,
    dtype: str = "uint16",
    nodata: float | None = 0,
    chunks: dict | None = None,
    res: float = 10.0,
    crs: str | None = CRS,
    dims: Sequence[str] | None = None,
    seed: int = 0,
) -> xr.DataArray:
    """A (time,) band, y, x DataArray on a north-up UTM grid with pixel-centre coords.

    ``dtype="uint16"`` stores reflectance x 10000 with ``nodata`` declared (0 by default);
    a float dtype stores reflectance.
    """
    data = make_scene(height, width, len(bands), times, seed)
    if np.dtype(dtype).kind in "iu":
        data = np.round(data * 10000).astype(dtype)
    else:
        data = data.astype(dtype)
    coords = {
        "band": list(bands),
        "y": Y0 - res * (np.arange(height) + 0.5),
        "x": X0 + res * (np.arange(width) + 0.5),
    }
    names = ["band", "y", "x"]
    if times:
        coords["time"] = pd.date_range("2024-05-01", periods=times, freq="5D")
        names.insert(0, "time")
    arr = xr.DataArray(data, dims=names, coords=coords, name="reflectance")
    if crs is not None:
        arr = arr.rio.write_crs(crs)
        from affine import Affine

        arr = arr.rio.write_transform(Affine(res, 0, X0, 0, -res, Y0))
    if nodata is not None and np.dtype(dtype).kind in "iu":
        arr.attrs["nodata"] = nodata
    if dims is not None:
        arr = arr.transpose(*dims)
    if chunks is not None:
        arr = arr.chunk(chunks)
    return arr


def make_dataset(height: int = 24, width: int = 20, *, names: Sequence[str] = ("red", "green", "blue", "nir"),
                 extra: Sequence[str] = ("scl",), times: int = 0, chunks: dict | None = None,
                 seed: int = 0) -> xr.Dataset:
    """odc-stac layout: one uint16 variable per band (reflectance x 10000, nodata 0)."""
    cube = make_cube(height, width, times=times, bands=("B04", "B03", "B02", "B08", *(["X"] * len(extra))),
                     seed=seed)
    ds = xr.Dataset()
    for i, name in enumerate((*names, *extra)):
        var = cube.isel(band=i, drop=True)
        var.attrs = {"nodata": 0}
        ds[name] = var
    ds = ds.rio.write_crs(CRS)
    if chunks is not None:
        ds = ds.chunk(chunks)
    return ds


@pytest.fixture
def cube_factory() -> Callable[..., xr.DataArray]:
    return make_cube


@pytest.fixture
def dataset_factory() -> Callable[..., xr.Dataset]:
    return make_dataset


def seam_ratio(img: np.ndarray, stride: int, patch: int, scale: int = 4) -> float:
    """Mean |gradient| across patch borders / across the other LR-pixel borders (the same phase
    of the 4x grid, so the comparison is fair for any upsampler), worst of both axes.

    img (..., H, W) at HR resolution; patch borders at ``scale * (k * stride)`` and
    ``scale * (k * stride + patch)``.
    """
    ratios = []
    for axis in (-1, -2):
        grad = np.abs(np.diff(img, axis=axis))
        grad = np.nanmean(np.moveaxis(grad, axis, -1).reshape(-1, grad.shape[axis]), axis=0)
        n = img.shape[axis]
        edges = {scale * k * stride for k in range(1, n)} | {scale * (k * stride + patch) for k in range(n)}
        idx = np.array(sorted(e - 1 for e in edges if 0 < e < n))
        mask = np.zeros(grad.size, bool)
        mask[idx] = True
        same_phase = (np.arange(grad.size) % scale) == scale - 1
        ratios.append(grad[mask].mean() / grad[~mask & same_phase].mean())
    return float(max(ratios))


def _raise_on_compute(dsk, keys, **kwargs):
    raise RuntimeError(f"a dask computation was triggered ({len(dsk)} tasks)")


@contextlib.contextmanager
def raise_if_dask_computes() -> Iterator[None]:
    """Any dask compute inside raises (xarray's test pattern)."""
    with dask.config.set(scheduler=_raise_on_compute):
        yield


@pytest.fixture
def no_compute():
    return raise_if_dask_computes
