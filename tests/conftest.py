"""Shared fixtures: small georeferenced Sentinel-2-like cubes (from ``xr_opensr.testing``), dask helpers."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import dask
import numpy as np
import pytest
import rioxarray  # noqa: F401  (registers .rio)
import xarray as xr

from xr_opensr.sentinel2 import GUIDED_BANDS, SR_BANDS, canonical_band
from xr_opensr.testing import s2_cube

pytest_plugins = ["conftest_stac"]  # the real STAC API server fixture (stac_api)

CRS = "EPSG:32633"  # UTM 33N
X0, Y0 = 500_000.0, 5_000_000.0
S2_BANDS = ("B04", "B03", "B02", "B08")  # the model order (red, green, blue, NIR)
ALL_BANDS = SR_BANDS  # the ten bands: S2_BANDS, then B05, B06, B07, B8A, B11, B12


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
    """``xr_opensr.testing.s2_cube`` with any band labels, dim order, and CRS/nodata switched off.

    A (time,) band, y, x DataArray on a north-up UTM grid (origin X0, Y0) with pixel-centre
    coords; ``dtype="uint16"``: reflectance x 10000 with ``nodata`` declared (0 by default; None
    removes the declaration), ``"float32"``: reflectance. A band label is given the data of its
    spectral band (``B04``/``red``/``B11``/``swir16`` ...: the 20 m bands constant over 2 x 2 pixels,
    as odc-stac delivers them); other labels get the mean of the four 10 m bands.
    """
    ids = [canonical_band(b) for b in bands]
    made = ALL_BANDS if set(ids) & set(GUIDED_BANDS) else S2_BANDS
    base = s2_cube(height, width, times=times or None, seed=seed, dtype="uint16" if dtype == "uint16" else "float32",
                   crs=CRS if crs is None else crs, origin=(X0, Y0), resolution=res, bands=made)
    data = base.values
    extra = data[..., :4, :, :].mean(axis=-3).astype(data.dtype)
    data = np.stack([data[..., made.index(i), :, :] if i in made else extra for i in ids], axis=-3)
    arr = xr.DataArray(data, dims=base.dims, coords={**base.coords, "band": list(bands)}, name="reflectance",
                       attrs={**base.attrs, "long_name": tuple(bands)})
    if dtype not in ("uint16", "float32"):
        arr = arr.astype(dtype)
    if crs is None:
        arr = arr.drop_vars("spatial_ref")
        arr.encoding.pop("grid_mapping", None)
        arr.attrs.pop("grid_mapping", None)
    if nodata is None or np.dtype(dtype).kind not in "iu":
        for key in ("nodata", "_FillValue"):
            arr.attrs.pop(key, None)
            arr.encoding.pop(key, None)
    elif nodata != 0:
        arr = arr.rio.write_nodata(nodata, encoded=False)
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


@pytest.fixture(scope="session")
def model20(tmp_path_factory) -> str:
    """A 20 m-band model folder with seeded random weights (fast, deterministic; not meaningful)."""
    from xr_opensr.models.guided import save_guided, seeded_guided

    return str(save_guided(seeded_guided(0), tmp_path_factory.mktemp("model20") / "seeded"))


@pytest.fixture
def cube_factory() -> Callable[..., xr.DataArray]:
    return make_cube


@pytest.fixture
def dataset_factory() -> Callable[..., xr.Dataset]:
    return make_dataset


def seam_ratio(img: np.ndarray, stride: int, patch: int, scale: int = 4, period: int | None = None) -> float:
    """Mean |gradient| across patch borders / across the other LR-pixel borders (the same phase
    of the 4x grid, so the comparison is fair for any upsampler), worst of both axes.

    img (..., H, W) at HR resolution; patch borders at ``scale * (k * stride)`` and
    ``scale * (k * stride + patch)``. ``period``: HR pixels of the input's pixel grid (default
    ``scale``; 8 for 20 m bands, whose patch borders are 20 m pixel borders).
    """
    period = scale if period is None else period
    ratios = []
    for axis in (-1, -2):
        grad = np.abs(np.diff(img, axis=axis))
        grad = np.nanmean(np.moveaxis(grad, axis, -1).reshape(-1, grad.shape[axis]), axis=0)
        n = img.shape[axis]
        edges = {scale * k * stride for k in range(1, n)} | {scale * (k * stride + patch) for k in range(n)}
        idx = np.array(sorted(e - 1 for e in edges if 0 < e < n))
        mask = np.zeros(grad.size, bool)
        mask[idx] = True
        same_phase = (np.arange(grad.size) % period) == period - 1
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
