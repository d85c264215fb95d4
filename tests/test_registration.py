"""xr_opensr.registration: shift convention, the Keys kernel, gain/offset, sub-pixel shift estimation
on synthetic textures (known truth) and on real multi-date Sentinel-2 looks (tests/multidate_data.py).

Measured when written (tolerances are ~2x these):

* synthetic (power-law texture shifted exactly in Fourier space, noise sigma = 4 % of the texture
  std, gain 1.3, a masked cloud): max error 0.004 px at 48 x 48, 0.003 at 96, 0.0013 at 256;
* a real date shifted by shift_image (lanczos4) and estimated: <= 0.005 px; shifted by the default
  cubic kernel and estimated with interpolation="cubic": <= 0.006 px;
* between real dates (all pairs of the 3 clear dates of each stack): |est(A,B) + est(B,A)| <= 0.015
  (eo-learn) / 0.007 (openEO) px; |est(A,B) + est(B,C) - est(A,C)| <= 0.024 / 0.014 px, while the
  estimates' own predicted standard errors are ~0.005 px: the rest is the looks not differing by a
  pure translation (2015 L1C, different orbits: excluding a 30 x 35 px part of the eo-learn window
  moves its estimate by 0.03 px). The tests allow 0.03 (antisymmetry) and 0.05 (closure); the shifts
  themselves are up to 0.9 px (eo-learn) and 0.33 px (openEO), so an estimator off by a sign, a
  factor or returning zeros fails.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from multidate_data import eolearn_stack, openeo_stack

from xr_opensr.registration import ShiftQuality, estimate_shift, fit_gain_offset, shift_image

ANTISYMMETRY_TOL = 0.03
CLOSURE_TOL = 0.05


# ------------------------------------------------------------------------------------ helpers
def texture(size: int, seed: int, bands: int = 3) -> np.ndarray:
    """The Fourier coefficients of a random texture (power law, smooth cut-off below Nyquist)."""
    rng = np.random.default_rng(seed)
    ky, kx = np.fft.fftfreq(size)[:, None], np.fft.fftfreq(size)[None, :]
    k = np.hypot(ky, kx)
    k[0, 0] = 1.0
    amp = k ** -1.0 * np.exp(-((k / 0.35) ** 2))
    return (rng.normal(size=(bands, size, size)) + 1j * rng.normal(size=(bands, size, size))) * amp


def fourier_shift(coeffs: np.ndarray, d) -> np.ndarray:
    """The texture with its content moved by exactly d = (dy, dx) (periodic)."""
    n = coeffs.shape[-1]
    ky, kx = np.fft.fftfreq(n)[:, None], np.fft.fftfreq(n)[None, :]
    return np.fft.ifft2(coeffs * np.exp(-2j * np.pi * (ky * d[0] + kx * d[1]))).real


def synthetic_pair(size: int, d, seed: int, *, noise=0.002, gain=1.3, offset=0.02, cloud=True):
    """(ref, mov, valid): mov = gain * ref moved by d + offset, both noisy, a bright cloud in mov
    (masked in valid). A 16 px margin is cut from the periodic texture so the borders are not periodic."""
    coeffs = texture(size + 32, seed)
    a, b = fourier_shift(coeffs, (0.0, 0.0)), fourier_shift(coeffs, d)
    std = a.std()
    a, b = (a / std * 0.05 + 0.1)[:, 16:-16, 16:-16], (b / std * 0.05 + 0.1)[:, 16:-16, 16:-16]
    rng = np.random.default_rng(seed + 1000)
    ref = a + rng.normal(0, noise, a.shape)
    mov = gain * b + offset + rng.normal(0, noise, b.shape)
    valid = np.ones((size, size), bool)
    if cloud:
        q = size // 4
        mov[:, q : 2 * q, q : 3 * q] = 0.8
        valid[q : 2 * q, q : 3 * q] = False
    return ref, mov, valid


def residual_rms(ref: np.ndarray, mov: np.ndarray, margin: int = 5) -> float:
    """RMS of ref - (gain * mov + offset) on the pixels finite in both (a margin cut off)."""
    ok = np.all(np.isfinite(ref), 0) & np.all(np.isfinite(mov), 0)
    ok[:margin], ok[-margin:], ok[:, :margin], ok[:, -margin:] = False, False, False, False
    gain, offset = fit_gain_offset(ref, mov, ok)
    pred = mov * gain[:, None, None] + offset[:, None, None]
    return float(np.sqrt(np.mean((pred - ref)[:, ok] ** 2)))


@pytest.fixture(scope="module")
def stacks():
    """The clear dates of both real stacks, (T, C, H, W) float64."""
    return {"eolearn": eolearn_stack(clear_only=True).values.astype(np.float64),
            "openeo": openeo_stack().values.astype(np.float64)}


@pytest.fixture(scope="module")
def pair_estimates(stacks):
    """Every ordered pair of clear dates of each stack: (shift, quality)."""
    return {name: {(i, j): estimate_shift(v[i], v[j], return_quality=True)
                   for i, j in itertools.permutations(range(v.shape[0]), 2)}
            for name, v in stacks.items()}


# ------------------------------------------------------------------------------------ shift_image
def test_shift_image_moves_content_by_plus_shift():
    img = np.arange(8 * 9, dtype=np.float64).reshape(8, 9)
    out = shift_image(img, (2, -3))
    # out[y, x] = img[y - 2, x + 3]; rows 0-1 and the last 3 columns come from outside -> NaN
    np.testing.assert_array_equal(out[2:, :-3], img[:-2, 3:])
    assert np.isnan(out[:2]).all() and np.isnan(out[:, -3:]).all()
    edge = shift_image(img, (2, -3), border="edge")
    np.testing.assert_array_equal(edge[:2, :-3], np.broadcast_to(img[0, 3:], (2, 6)))
    assert np.isfinite(edge).all()
    # a bright pixel moves to (y + dy, x + dx), fractional shifts included (centroid)
    spot = np.zeros((2, 21, 21))
    spot[:, 10, 10] = 1.0
    # (exact for the cubic and linear kernels, which reproduce linear functions; Lanczos nearly)
    for order, tol in (("cubic", 1e-9), ("linear", 1e-9), ("lanczos3", 0.03), ("lanczos4", 0.03)):
        moved = shift_image(spot, (1.25, -0.5), order=order, border="edge")
        yy, xx = np.mgrid[:21, :21]
        cy, cx = (moved[0] * yy).sum() / moved[0].sum(), (moved[0] * xx).sum() / moved[0].sum()
        assert cy == pytest.approx(11.25, abs=tol) and cx == pytest.approx(9.5, abs=tol), order
        np.testing.assert_array_equal(moved[0], moved[1])


def test_shift_image_is_the_keys_kernel_of_sensor():
    # half a pixel: Keys (a = -0.5) weights -1/16, 9/16, 9/16, -1/16 on the pixels -1 .. 2 around
    rng = np.random.default_rng(0)
    row = rng.normal(size=12)
    out = shift_image(row[None, :], (0.0, -0.5))  # out[x] = row(x + 0.5)
    expected = (-row[3] + 9 * row[4] + 9 * row[5] - row[6]) / 16
    assert out[0, 4] == pytest.approx(expected, abs=1e-12)
    # the same numbers as the sensor's bicubic upsampling, which puts output column 2i+1 of a factor-2
    # upsampling at LR position i + 0.25 (align_corners=False): one kernel in the package
    from xr_opensr.sensor import bicubic_upsample

    img = rng.normal(size=(4, 10))
    along_x = np.stack([bicubic_upsample(np.repeat(r[None], 4, axis=0), 2)[0, 1::2] for r in img])
    shifted = shift_image(img, (0.0, -0.25))  # column x samples x + 0.25
    ok = np.isfinite(shifted)
    assert ok[:, 1:-2].all() and not ok[:, [0, -2, -1]].any()  # the 4 taps reach outside there
    np.testing.assert_allclose(shifted[ok], along_x[ok], atol=1e-12)


def test_shift_image_nan_support_and_constants():
    img = np.full((3, 16, 16), 0.25)
    img[1, 8, 8] = np.nan
    out = shift_image(img, (0.4, 0.3))
    # a constant stays constant (weights sum to 1); the NaN spreads to its 4 x 4 support only
    finite = np.isfinite(out)
    assert np.allclose(out[finite], 0.25)
    bad = np.argwhere(~finite[1, 2:-2, 2:-2]) + 2
    assert sorted({tuple(p) for p in bad}) == [(y, x) for y in range(7, 11) for x in range(7, 11)]
    assert finite[0, 2:-2, 2:-2].all() and finite[2, 2:-2, 2:-2].all()
    # an integer shift copies exactly, NaN included, and keeps float32
    f32 = np.random.default_rng(1).random((5, 6)).astype(np.float32)
    moved = shift_image(f32, (1, 1))
    assert moved.dtype == np.float32
    np.testing.assert_array_equal(moved[1:, 1:], f32[:-1, :-1])
    with pytest.raises(ValueError):
        shift_image(img, (0.1,))
    with pytest.raises(ValueError):
        shift_image(img, (0.1, 0.2), order="quintic")
    with pytest.raises(ValueError):
        shift_image(img, (0.1, 0.2), border="wrap")


def test_shift_image_round_trip():
    ref, _, _ = synthetic_pair(64, (0, 0), 3, noise=0, cloud=False)
    back = shift_image(shift_image(ref, (0.3, -0.7), order="lanczos4"), (-0.3, 0.7), order="lanczos4")
    ok = np.isfinite(back)
    assert ok[:, 10:-10, 10:-10].all()  # lanczos4 reaches 4 px: NaN only near the borders
    assert np.abs(back - ref)[ok].max() < 0.1 * ref.std()


# ------------------------------------------------------------------------------------ gain/offset
def test_fit_gain_offset_recovers_per_band_gain_and_offset_despite_outliers():
    rng = np.random.default_rng(2)
    mov = rng.random((3, 40, 40))
    gain, offset = np.array([0.8, 1.2, 2.0]), np.array([0.05, -0.1, 0.0])
    ref = mov * gain[:, None, None] + offset[:, None, None] + rng.normal(0, 1e-3, mov.shape)
    ref[:, :3, :5] += 20.0  # outliers (an unmasked cloud)
    valid = np.ones((40, 40), bool)
    valid[30:, 30:] = False
    ref[:, 30:, 30:] = np.nan  # invalid and NaN: ignored
    g, o = fit_gain_offset(ref, mov, valid)
    np.testing.assert_allclose(g, gain, atol=5e-3)
    np.testing.assert_allclose(o, offset, atol=5e-3)
    g_plain, _ = fit_gain_offset(ref, mov, valid, robust=False)
    assert np.abs(g_plain - gain).max() > 0.05  # the outliers do pull plain least squares
    g2, o2 = fit_gain_offset(ref[0], mov[0])  # (H, W)
    assert g2.shape == (1,) and g2[0] == pytest.approx(g[0], abs=1e-3)


# ------------------------------------------------------------------------------------ synthetic
@pytest.mark.parametrize("size", [48, 96, 256])
def test_synthetic_subpixel_shifts_are_recovered(size):
    rng = np.random.default_rng(size)
    shifts = rng.uniform(-1.8, 1.8, size=(3 if size < 256 else 1, 2))
    for k, d in enumerate(shifts):
        ref, mov, valid = synthetic_pair(size, d, seed=10 * size + k)
        s, q = estimate_shift(ref, mov, valid, return_quality=True)
        assert q.ok, q
        np.testing.assert_allclose(s, d, atol=0.02)
        assert np.abs(q.gain - 1 / 1.3).max() < 0.02  # ref ~ gain * registered mov + offset
        assert q.correlation > 0.95 and q.sigma < 0.01


def test_estimate_shift_sign_convention_and_2d_input():
    ref, mov, _ = synthetic_pair(64, (0.6, -0.3), seed=5, cloud=False)
    s = estimate_shift(ref[0], mov[0])  # (H, W)
    np.testing.assert_allclose(s, (0.6, -0.3), atol=0.02)
    # shift_image(ref, s) reproduces mov (up to gain/offset) better than shift_image(ref, -s)
    assert residual_rms(mov, shift_image(ref, s, order="lanczos4")) < \
        0.5 * residual_rms(mov, shift_image(ref, -s, order="lanczos4"))
    # deterministic
    np.testing.assert_array_equal(estimate_shift(ref, mov), estimate_shift(ref, mov))


def test_masked_pixels_are_not_used():
    ref, mov, valid = synthetic_pair(96, (0.37, 0.81), seed=7, cloud=True)
    masked = estimate_shift(ref, mov, valid)
    garbage = mov.copy()
    garbage[:, ~valid] = np.random.default_rng(0).random((3, int((~valid).sum())))
    np.testing.assert_allclose(estimate_shift(ref, garbage, valid), masked, atol=1e-9)
    nan_cloud = mov.copy()
    nan_cloud[:, ~valid] = np.nan  # NaN is invalid without a mask
    np.testing.assert_allclose(estimate_shift(ref, nan_cloud), masked, atol=1e-6)
    # without the mask the bright cloud is in the fit: the estimate is not better (it may fall back)
    unmasked = estimate_shift(ref, mov)
    assert np.abs(unmasked - (0.37, 0.81)).max() >= np.abs(masked - (0.37, 0.81)).max()


def test_textureless_and_unrelated_windows_fall_back():
    rng = np.random.default_rng(4)
    flat = np.full((4, 64, 64), 0.1)
    s, q = estimate_shift(flat, flat, return_quality=True)
    assert not q.ok and q.reason == "no texture" and np.array_equal(s, [0.0, 0.0])
    # noise only: independent in the two looks
    a, b = flat + rng.normal(0, 0.002, flat.shape), flat + rng.normal(0, 0.002, flat.shape)
    s, q = estimate_shift(a, b, return_quality=True)
    assert not q.ok and q.reason == "low correlation" and np.array_equal(s, [0.0, 0.0])
    # stripes: texture along x only, dy undetermined
    xx = np.arange(64)[None, None, :] * np.ones((2, 64, 1))
    stripes = 0.1 + 0.05 * np.sin(xx / 3.0)
    s, q = estimate_shift(stripes, shift_image(stripes, (0.3, 0.4), order="lanczos4"), return_quality=True)
    assert not q.ok and q.reason == "no texture" and np.array_equal(s, [0.0, 0.0])
    # too few valid pixels
    ref, mov, _ = synthetic_pair(48, (0.2, 0.2), seed=1, cloud=False)
    valid = np.zeros((48, 48), bool)
    valid[:10, :10] = True
    s, q = estimate_shift(ref, mov, valid, return_quality=True)
    assert q.reason == "too few valid pixels" and np.array_equal(s, [0.0, 0.0])
    # beyond max_shift
    ref, mov, _ = synthetic_pair(96, (0.4, 3.4), seed=2, cloud=False)
    s, q = estimate_shift(ref, mov, max_shift=1.0, return_quality=True)
    assert not q.ok and np.array_equal(s, [0.0, 0.0])
    assert isinstance(q, ShiftQuality)
    np.testing.assert_allclose(estimate_shift(ref, mov, max_shift=4.0), (0.4, 3.4), atol=0.02)


def test_estimate_shift_rejects_bad_input():
    a = np.zeros((2, 8, 8))
    with pytest.raises(ValueError):
        estimate_shift(a, np.zeros((2, 8, 9)))
    with pytest.raises(ValueError):
        estimate_shift(a, a, valid=np.ones((8, 8)))  # not boolean
    with pytest.raises(ValueError):
        estimate_shift(a, a, interpolation="sinc")


# ------------------------------------------------------------------------------------ real looks
@pytest.mark.parametrize("name", ["eolearn", "openeo"])
def test_real_date_shifted_by_a_known_amount_is_recovered(stacks, name):
    v = stacks[name]
    for d in [(0.25, -0.4), (-1.3, 0.6)]:
        for t in range(v.shape[0]):
            moved = shift_image(v[t], d, order="lanczos4")
            np.testing.assert_allclose(estimate_shift(v[t], moved), d, atol=0.01)
            # shift_image's default cubic kernel, estimated with the same kernel
            moved = shift_image(v[t], d)
            np.testing.assert_allclose(estimate_shift(v[t], moved, interpolation="cubic"), d, atol=0.01)


@pytest.mark.parametrize("name", ["eolearn", "openeo"])
def test_real_dates_estimates_are_consistent(pair_estimates, name):
    est = pair_estimates[name]
    assert all(q.ok for _, q in est.values()), {k: q.reason for k, (_, q) in est.items()}
    shifts = {k: s for k, (s, _) in est.items()}
    # the looks really are shifted (so that the checks below could fail)
    assert max(np.abs(s).max() for s in shifts.values()) > (0.5 if name == "eolearn" else 0.25)
    anti = max(np.abs(shifts[i, j] + shifts[j, i]).max() for i, j in shifts)
    n = max(i for i, _ in shifts) + 1
    closure = max(np.abs(shifts[a, b] + shifts[b, c] - shifts[a, c]).max()
                  for a, b, c in itertools.permutations(range(n), 3))
    assert anti < ANTISYMMETRY_TOL, anti
    assert closure < CLOSURE_TOL, closure
    assert all(q.sigma < 0.02 and q.correlation > 0.9 for _, q in est.values())


@pytest.mark.parametrize("name", ["eolearn", "openeo"])
def test_registering_real_dates_reduces_the_residual(stacks, pair_estimates, name):
    v = stacks[name]
    for (i, j), (s, _) in pair_estimates[name].items():
        registered = residual_rms(v[i], shift_image(v[j], -s, order="lanczos4"))
        unregistered = residual_rms(v[i], v[j])
        wrong_way = residual_rms(v[i], shift_image(v[j], s, order="lanczos4"))
        assert registered < 0.95 * unregistered, (i, j, registered, unregistered)
        assert registered < wrong_way, (i, j, registered, wrong_way)


def test_real_cloudy_date_falls_back_and_masked_cloud_is_ignored():
    full = eolearn_stack()
    v = full.values.astype(np.float64)
    cloudy = [t for t, c in enumerate(full.attrs["cloud_coverage"]) if c == 1.0]
    clear = [t for t, c in enumerate(full.attrs["cloud_coverage"]) if c == 0.0]
    assert len(cloudy) == 2 and len(clear) == 3
    for t in cloudy:  # a clear look against a fully cloudy one: nothing to register
        s, q = estimate_shift(v[clear[0]], v[t], return_quality=True)
        assert not q.ok and np.array_equal(s, [0.0, 0.0]), q.reason
    # a real cloud pasted into a clear look and masked gives the estimate of the same mask without it
    ref, mov = v[clear[0]], v[clear[1]].copy()
    valid = np.ones(ref.shape[1:], bool)
    valid[10:40, 15:50] = False
    without = estimate_shift(ref, mov, valid)
    mov[:, 10:40, 15:50] = v[cloudy[0], :, 10:40, 15:50]
    np.testing.assert_allclose(estimate_shift(ref, mov, valid), without, atol=1e-6)
    assert np.abs(without).max() > 0.3


def test_openeo_items_load_through_the_library_stac_loader():
    pytest.importorskip("odc.stac")
    from multidate_data import openeo_stack_via_load_s2

    direct, loaded = openeo_stack(), openeo_stack_via_load_s2()
    np.testing.assert_array_equal(loaded.values, direct.values)
    for dim in ("time", "y", "x"):
        np.testing.assert_array_equal(loaded[dim].values, direct[dim].values)
    assert list(loaded.band.values) == ["B04", "B03", "B02"] and loaded.rio.crs == direct.rio.crs
    assert "s2:boa_offset_applied = true" in loaded.attrs["offset_rules"]  # no -1000 DN on these
