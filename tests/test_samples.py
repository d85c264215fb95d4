"""``superresolve(return_samples=True)``: the samples agree with ``sr`` and ``uncertainty`` (issue 19, 6).

What the docstring promises, checked at every valid pixel, patch overlaps included: for S >= 2 samples,
every sample >= 0, their mean is ``sr`` and their standard deviation (ddof=1) is
``min(uncertainty, sr * sqrt(S))`` (``uncertainty`` except where no S values >= 0 with mean ``sr`` can
spread that much), to float32 rounding; with ``output_dtype="uint16"`` each value is the float32 value
encoded by the rule of ``xr_opensr._encode``. Before the fix the blend averaged the samples of
overlapping patches, which shrank their spread (std 0.145x ``uncertainty`` at the 5th percentile),
and the default model's samples went below 0.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import make_cube

import xr_opensr.accessor  # noqa: F401  (registers .opensr)
from xr_opensr import _encode
from xr_opensr.models.pipeline import samples_with_moments

# float32 rounding of values up to ~1 (reflectance), after a float64 mean/std of S of them
ATOL = 2e-6


def moments(samples: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(samples, dtype=np.float64)
    return x.mean(axis=axis), x.std(axis=axis, ddof=1)


def check_agreement(samples: np.ndarray, sr: np.ndarray, unc: np.ndarray) -> np.ndarray:
    """The promise on float32 arrays (samples (S, ...), sr and unc (...)); returns the valid mask."""
    n = samples.shape[0]
    valid = np.isfinite(sr)
    assert np.isnan(samples[:, ~valid]).all()
    assert np.isfinite(samples[:, valid]).all() and np.isfinite(unc[valid]).all()
    assert samples[:, valid].min() >= 0
    mean, std = moments(samples)
    np.testing.assert_allclose(mean[valid], sr[valid], rtol=0, atol=ATOL)
    bound = np.minimum(unc.astype(np.float64), sr.astype(np.float64) * math.sqrt(n))
    np.testing.assert_allclose(std[valid], bound[valid], rtol=0, atol=ATOL)
    return valid


# --------------------------------------------------------------------------- the per-pixel rule


@pytest.mark.parametrize("n", [2, 3, 10])
def test_samples_with_moments_gives_the_mean_the_std_and_no_negative_value(n):
    rng = np.random.default_rng(n)
    pixels = 4000
    x = rng.normal(0.1, 0.05, (n, pixels)).astype(np.float32)
    m = np.abs(rng.normal(0.08, 0.05, pixels)).astype(np.float32)
    u = rng.uniform(0, 0.06, pixels).astype(np.float32)
    m[:50] = 0  # sr clipped at 0, uncertainty > 0: every sample 0
    u[50:100] = 0  # no spread: every sample is the mean
    x[:, 100:150] = x[0, 100:150]  # the raw samples agree: a fixed ramp stands in
    x[-1, 150:200] = x[-2, 150:200] = x[:, 150:200].max(axis=0)  # ties at the top
    x[:, 200:210] = np.nan  # nodata
    m[210:220] = np.nan
    y = samples_with_moments(x, m, u)
    assert y.dtype == np.float32 and y.shape == x.shape
    assert np.isnan(y[:, 200:220]).all()
    keep = np.ones(pixels, bool)
    keep[200:220] = False
    check_agreement(y[:, keep], m[keep], u[keep])
    assert (y[:, :50] == 0).all() and (y[:, 50:100] == m[50:100]).all()
    # where the plain rescaling stays >= 0 it is what is returned; elsewhere the sample order is kept
    with np.errstate(invalid="ignore", divide="ignore"):
        z = (x - x.mean(0, dtype=np.float64)) / x.std(0, ddof=1, dtype=np.float64)
    plain = (m + u * z.min(0) > 1e-6) & keep
    plain[:200] = False
    assert plain.sum() > 1000 and (~plain[200:] & keep[200:]).sum() > 200
    np.testing.assert_allclose(y[:, plain], (m + u * z)[:, plain], rtol=0, atol=1e-6)
    order = np.argsort(x[:, 220:], axis=0, kind="stable")
    assert (np.diff(np.take_along_axis(y[:, 220:], order, axis=0), axis=0) >= 0).all()


def test_samples_with_moments_takes_any_axis():
    rng = np.random.default_rng(1)
    x = rng.normal(0.1, 0.05, (2, 5, 3, 4)).astype(np.float32)  # samples on axis 1
    m = np.full((2, 3, 4), 0.05, np.float32)
    u = np.full((2, 3, 4), 0.02, np.float32)
    y = samples_with_moments(x, m, u, axis=1)
    check_agreement(np.moveaxis(y, 1, 0), m, u)


# --------------------------------------------------------------------------- through superresolve

# LR cubes of several patches (overlaps in both directions) cut into several blocks
CASES = {
    "tiny-2": ("tiny", 2, (40, 36)),
    "tiny-5": ("tiny", 5, (40, 36)),
    "default-3": ("default", 3, (44, 40)),
}


@pytest.fixture(scope="module", params=list(CASES))
def run(request):
    model, n, (h, w) = CASES[request.param]
    cube = make_cube(h, w, chunks={"y": 20, "x": 20}, seed=3)
    kw = dict(model=model, steps=2, return_samples=True)
    ds = cube.opensr.superresolve(n, **kw).compute()
    dn = cube.opensr.superresolve(n, output_dtype="uint16", **kw).compute()
    plain = cube.opensr.superresolve(n, model=model, steps=2).compute()
    return ds, dn, plain


def overlap_mask(ds) -> np.ndarray:
    """HR pixels (y, x) covered by more than one patch of the samples' grid (the model's own patch grid;
    a convolutional model's cropped tiles give sr and uncertainty, ``samples_patch``/``samples_overlap``)."""
    s = ds.attrs["scale"]
    patch = ds.attrs.get("samples_patch", ds.attrs["patch"])
    overlap = ds.attrs.get("samples_overlap", ds.attrs["overlap"])
    stride = patch - overlap

    def axis(n: int) -> np.ndarray:
        lr = np.arange(n // s)
        inside = lr % stride < overlap
        inside &= lr >= stride  # the first patch's start is covered once
        last = max(0, math.ceil((n // s - overlap) / stride) - 1) * stride
        inside &= lr < last + overlap
        return inside.repeat(s)

    return np.logical_or.outer(axis(ds.sizes["y"]), axis(ds.sizes["x"]))


def test_samples_mean_and_std_are_sr_and_uncertainty_overlaps_included(run):
    ds, _, _ = run
    samples, sr, unc = ds.samples.values, ds.sr.values, ds.uncertainty.values
    assert ds.samples.dims[0] == "sample" and samples.dtype == np.float32
    valid = check_agreement(samples, sr, unc)
    overlaps = overlap_mask(ds)[None] & valid
    assert overlaps.sum() > 0.2 * valid.sum()  # the blended pixels are a good part of what is checked
    _, std = moments(samples)
    agree = np.abs(std - unc) <= ATOL
    assert agree[overlaps].mean() > 0.98  # std == uncertainty but where sr * sqrt(S) is less
    assert float(np.median(unc[valid])) > 1e-3  # the check is not vacuous


def test_samples_leave_sr_and_uncertainty_as_they_are(run):
    ds, _, plain = run
    np.testing.assert_array_equal(ds.sr.values, plain.sr.values)
    np.testing.assert_array_equal(ds.uncertainty.values, plain.uncertainty.values)


def test_uint16_samples_are_the_encoded_float_samples(run):
    ds, dn, _ = run
    for name in ("sr", "uncertainty", "samples"):
        assert dn[name].dtype == np.uint16
        np.testing.assert_array_equal(dn[name].values, _encode.to_dn(ds[name].values))
    # decoded: within the encoding's rounding of the float32 relations (each value within 1e-4)
    q = dn.samples.values * _encode.DN_SCALE
    q_sr, q_unc = dn.sr.values * _encode.DN_SCALE, dn.uncertainty.values * _encode.DN_SCALE
    valid = dn.sr.values > 0
    mean, std = moments(q)
    assert np.abs(mean - q_sr)[valid].max() <= 2e-4 + ATOL
    n = q.shape[0]
    spread = ds.uncertainty.values <= ds.sr.values * math.sqrt(n)
    # sd(x + e) - sd(x) <= sd(e), the errors e in [-0.5e-4, 1e-4]; and the uncertainty's own 1e-4
    assert np.abs(std - q_unc)[valid & spread].max() <= 0.75e-4 * math.sqrt(n / (n - 1)) + 1e-4 + ATOL


def test_samples_agree_with_a_time_dim_and_one_sample_is_sr():
    cube = make_cube(24, 20, times=2, chunks={"time": 1, "y": 12, "x": 10})
    ds = cube.opensr.superresolve(3, model="tiny", steps=2, return_samples=True).compute()
    assert ds.samples.dims[:2] == ("sample", "time")
    for t in range(2):
        check_agreement(ds.samples.values[:, t], ds.sr.values[t], ds.uncertainty.values[t])
    one = cube.opensr.superresolve(1, model="tiny", steps=2, return_samples=True).compute()
    np.testing.assert_array_equal(one.samples.values[0], one.sr.values)
