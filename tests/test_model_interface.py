"""The model interface (issue 20): a new model is one class plus one registry entry.

``MedianOverTime`` below is a whole model that consumes the ``time`` dim (per pixel, the median over the
dates of the bicubic upsampling): it declares ``("time", "band", "y", "x")`` as its core dims, the graph
hands it whole time stacks, and its output has no ``time``. It runs through the accessor, the CLI and a
Zarr output, lazily and chunk-invariantly, with nothing else in the library knowing about it.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import xarray as xr
from conftest import make_cube, raise_if_dask_computes

import xr_opensr  # noqa: F401  (registers .opensr)
from xr_opensr.models import registry
from xr_opensr.models.base import Model, ModelInfo, SampleOptions
from xr_opensr.sensor import bicubic_upsample
from xr_opensr.sentinel2 import MODEL_BANDS


class MedianOverTime:
    """Per pixel, the median over the valid dates of the bicubic upsampling of each date."""

    info = ModelInfo(name="median-time", version="0.0.1", bands=MODEL_BANDS, patch=16, overlap=0,
                     core_dims=("time", "band", "y", "x"), outputs=("mean",), mean_without_samples=True)
    device = torch.device("cpu")

    def place(self, device="auto", dtype=None):
        return self

    def run(self, patches: np.ndarray, seeds: np.ndarray, options: SampleOptions) -> np.ndarray:
        n, t, c, p, _ = patches.shape
        s = self.info.scale
        up = np.asarray(bicubic_upsample(patches.reshape(n * t, c, p, p), s)).reshape(n, t, c, s * p, s * p)
        invalid = ~np.isfinite(patches).all(axis=2).repeat(s, axis=-2).repeat(s, axis=-1)  # (n, t, sP, sP)
        up = np.where(invalid[:, :, None], np.nan, up)
        out = np.full((n, options.n_outputs, c, s * p, s * p), np.nan, dtype=np.float32)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # no valid date: NaN (nodata)
            out[:, 0] = np.nanmedian(up, axis=1)
        return out


registry.register("median-time", lambda device="auto", dtype=None: MedianOverTime())  # the one registry entry


@pytest.fixture
def series():
    cube = make_cube(40, 36, times=3, dtype="float32")
    cube[1, :, 4:12, 6:14] = np.nan  # a cloud on one date: the other dates still give the median there
    return cube


def test_a_model_that_consumes_time_through_the_accessor(series):
    assert isinstance(MedianOverTime(), Model)
    with raise_if_dask_computes():
        res = series.chunk({"time": 1, "x": 16, "y": 16}).opensr.superresolve(0, model="median-time")
    assert res.sr.dims == ("band", "y", "x") and "time" not in res.coords and res.sr.shape == (4, 160, 144)
    assert res.attrs["model"] == "median-time" and "steps" not in res.attrs
    res = res.compute()
    # the median over time of the bicubic baseline run date by date on the same patch grid (overlap 0: no blend)
    per_date = series.opensr.superresolve(0, model="bicubic", patch=16, overlap=0).sr.compute()
    np.testing.assert_array_equal(res.sr.values, per_date.median("time").values)
    assert np.isfinite(res.sr.values).all()
    # chunk-invariant along every dim, time included (the graph rechunks the core dims whole)
    again = series.chunk({"time": 3, "x": 36, "y": 8}).opensr.superresolve(0, model="median-time").compute()
    xr.testing.assert_identical(res, again)


def test_a_model_that_consumes_time_needs_a_time_dim():
    with pytest.raises(xr_opensr.errors.InputError, match=r"consumes the dims \['time'\].*expand_dims"):
        make_cube(16, 16).opensr.superresolve(0, model="median-time")


def test_a_model_that_consumes_time_through_the_cli_to_zarr(series, tmp_path):
    from xr_opensr import cli

    src, out = tmp_path / "series.zarr", tmp_path / "median.zarr"
    series.to_dataset(name="reflectance").to_zarr(src)
    assert cli.main(["superresolve", str(src), str(out), "--model", "median-time", "--samples", "0"]) == 0
    back = xr.open_zarr(out)
    direct = series.opensr.superresolve(0, model="median-time").compute()
    np.testing.assert_array_equal(back.sr.values, direct.sr.values)
    assert "time" not in back.sr.dims
