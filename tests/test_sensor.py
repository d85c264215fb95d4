"""xr_opensr.sensor.degrade is the one sensor model: training, the consistency step and the synthetic
cubes give bit-identical LR images through it."""

from __future__ import annotations

import numpy as np
import pytest

from training.degradation import DegradationConfig
from training.degradation import degrade as training_degrade
from xr_opensr import sensor, testing
from xr_opensr.models.consistency import ConsistencyConfig, degrade_to_lr


@pytest.fixture(scope="module")
def hr() -> np.ndarray:
    scene = testing.synthetic_scene((32, 40), seed=3)  # (4, 32, 40) float32 reflectance
    scene[1, 5:9, 6:10] = np.nan
    return scene


def test_degrade_is_psf_then_area_mean(hr):
    got = sensor.degrade(hr, 4, psf_sigma=1.7)
    want = sensor.area_downsample(sensor.gaussian_filter(hr, 1.7), 4)
    np.testing.assert_array_equal(got, want)
    assert got.shape == (4, 8, 10) and got.dtype == np.float32
    np.testing.assert_array_equal(sensor.degrade(hr, 4, psf_sigma=0), sensor.area_downsample(hr, 4))
    assert np.isnan(got[1, 1:3, 1:3]).all() and np.isfinite(got[0]).all()  # nodata neither spreads nor shrinks
    assert sensor.degrade(hr.astype(np.float64), 4).dtype == np.float64


def test_training_consistency_and_testing_use_the_same_operator(hr):
    for sigma in (1.7, 0.9):
        ref = sensor.degrade(hr, 4, psf_sigma=sigma)
        train = training_degrade(hr, DegradationConfig(psf_sigma=sigma, clip_min=None))
        np.testing.assert_array_equal(train, ref)
        cons = degrade_to_lr(hr, 4, ConsistencyConfig(kernel="psf", psf_sigma=sigma))
        np.testing.assert_array_equal(cons, ref)
    np.testing.assert_array_equal(degrade_to_lr(hr, 4, ConsistencyConfig(kernel="area")), sensor.degrade(hr, 4, psf_sigma=0))
    assert DegradationConfig().psf_sigma == sensor.PSF_SIGMA_HR == testing.PSF_SIGMA_HR


def test_mtf_at_nyquist_of_the_default_psf():
    assert 0.2 <= sensor.mtf_at_nyquist() <= 0.3  # Sentinel-2 MSI 10 m bands: 0.2-0.3
    assert sensor.mtf_at_nyquist(psf_sigma=0) == pytest.approx(1 / (4 * np.sin(np.pi / 8)))  # the box alone
    assert sensor.mtf_at_nyquist(psf_sigma=2.5) < sensor.mtf_at_nyquist(psf_sigma=1.0)
    assert DegradationConfig(psf_sigma=1.2).mtf_at_nyquist() == sensor.mtf_at_nyquist(4, 1.2)


# --------------------------------------------------------------------------- bicubic_upsample


def _bicubic_oracle(lr: np.ndarray, factor: int = 4, a: float = -0.5) -> np.ndarray:
    """The previous implementation, kept as the oracle: per axis, 4 gathers of clipped indices times
    Keys' weights, summed tap by tap in the array's dtype; NaN filled, then masked back."""

    def axis_pass(arr, axis):
        n = arr.shape[axis]
        src = (np.arange(n * factor) + 0.5) / factor - 0.5
        base = np.floor(src).astype(int)
        weights = sensor._cubic_weights(src - base, a).astype(arr.dtype)
        shape = [1] * arr.ndim
        shape[axis] = -1
        out = None
        for tap in range(4):
            term = np.take(arr, np.clip(base + tap - 1, 0, n - 1), axis=axis) * weights[tap].reshape(shape)
            out = term if out is None else out + term
        return out

    nan = np.isnan(lr)
    filled = sensor._fill_nan(lr) if nan.any() else lr
    out = axis_pass(axis_pass(filled, -2), -1)
    out[np.repeat(np.repeat(nan, factor, axis=-2), factor, axis=-1)] = np.nan
    return out


@pytest.mark.parametrize(("shape", "factor", "a", "dtype"), [
    ((3, 4, 32, 32), 4, -0.5, np.float32),   # model patches
    ((5, 7), 4, -0.5, np.float32),
    ((1, 1), 4, -0.5, np.float32),
    ((2, 64, 48), 3, -0.75, np.float32),
    ((2, 3, 9, 17), 2, -0.5, np.float64),
    ((4, 70, 90), 4, -0.5, np.float32),
    ((2, 65, 10), 5, -0.75, np.float64),
])
def test_bicubic_equals_the_previous_implementation(shape, factor, a, dtype):
    x = (np.random.default_rng(sum(shape)).random(shape) * 0.6).astype(dtype)
    got, want = sensor.bicubic_upsample(x, factor, a=a), _bicubic_oracle(x, factor, a)
    assert got.dtype == dtype and got.shape == want.shape and got.flags.c_contiguous
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 if dtype == np.float32 else 1e-12)


def test_bicubic_nodata_as_before_and_infinities_stay_local():
    x = np.random.default_rng(7).random((6, 4, 32, 32), dtype=np.float32)
    x[1, :, 3:5, 0:2] = np.nan  # a corner block: filled from its neighbours, masked back
    x[2, 0] = np.nan            # one band all nodata
    x[4] = np.nan               # all nodata
    x[5, 1, 7, 7] = np.inf
    with np.errstate(invalid="ignore"):  # inf * 0 and inf - inf
        got, want = sensor.bicubic_upsample(x), _bicubic_oracle(x)
    np.testing.assert_array_equal(np.isnan(got[:5]), np.isnan(want[:5]))
    finite = np.isfinite(want[:5])
    np.testing.assert_allclose(got[:5][finite], want[:5][finite], rtol=0, atol=1e-6)
    assert np.isnan(got[4]).all() and np.isfinite(got[5, [0, 2, 3]]).all()
    bad = ~np.isfinite(got[5, 1])
    assert bad[4 * 7 : 4 * 8, 4 * 7 : 4 * 8].all() and not bad[: 4 * 5].any() and not bad[4 * 10 :].any()
    assert not bad[:, : 4 * 5].any() and not bad[:, 4 * 10 :].any()  # within the 5 x 5 LR neighbourhood


def test_bicubic_of_a_patch_does_not_depend_on_the_stack():
    """A patch gives the same bits alone and anywhere in a stack (what chunk invariance needs)."""
    x = np.random.default_rng(8).random((9, 4, 32, 32), dtype=np.float32)
    x[6, 2, 4, 4] = np.nan
    full = sensor.bicubic_upsample(x)
    for i in range(len(x)):
        np.testing.assert_array_equal(sensor.bicubic_upsample(x[i]), full[i])
    np.testing.assert_array_equal(sensor.bicubic_upsample(x[::-1])[::-1], full)
    np.testing.assert_array_equal(sensor.bicubic_upsample(np.concatenate([x[4:], x[:4]]))[5:], full[:4])


@pytest.mark.parametrize(("n", "factor", "sigma"), [(32, 2, 0.85), (128, 4, 1.7), (40, 4, 0.0), (16, 2, 0.85), (8, 4, 1.7)])
def test_matrices_are_degrade_and_bicubic_of_finite_images(n, factor, sigma):
    x = np.random.default_rng(n).random((3, n, n + 2 * factor))
    down_h, down_w = sensor.degrade_matrix(n, factor, psf_sigma=sigma), sensor.degrade_matrix(n + 2 * factor, factor,
                                                                                               psf_sigma=sigma)
    assert down_h.shape == (n // factor, n) and down_h.dtype == np.float64
    np.testing.assert_allclose(down_h @ x @ down_w.T, sensor.degrade(x, factor, psf_sigma=sigma), rtol=0, atol=1e-14)
    lr = x[:, : n // factor, : n // factor + 1]
    up_h, up_w = sensor.bicubic_matrix(n // factor, factor), sensor.bicubic_matrix(n // factor + 1, factor)
    assert up_h.shape == (n, n // factor)
    np.testing.assert_allclose(up_h @ lr @ up_w.T, sensor.bicubic_upsample(lr, factor), rtol=0, atol=1e-14)
    with pytest.raises(ValueError, match="not a multiple of factor"):
        sensor.degrade_matrix(n + 1, factor)


# --------------------------------------------------------------------------- back-projection


def _steps(fine, coarse, factor, iterations, sigma):
    """The definition: ``fine += bicubic(coarse - degrade(fine))``, ``iterations`` times."""
    for _ in range(iterations):
        fine = fine + sensor.bicubic_upsample(coarse - sensor.degrade(fine, factor, psf_sigma=sigma), factor)
    return fine


@pytest.mark.parametrize(("factor", "sigma", "iterations"), [(4, 1.7, 1), (4, 0.0, 2), (2, 0.85, 5), (4, 1.7, 0)])
def test_back_projection_in_numpy_and_torch(factor, sigma, iterations):
    import torch

    rng = np.random.default_rng(factor + iterations)
    fine = rng.uniform(0, 0.4, (2, 3, 3, 12 * factor, 8 * factor)).astype(np.float32)  # (B, S, C, H, W)
    coarse = rng.uniform(0, 0.4, (2, 1, 3, 12, 8)).astype(np.float32)                   # broadcast over S
    got = sensor.back_project(fine, coarse, factor, iterations, psf_sigma=sigma)
    assert got.dtype == np.float32 and got.shape == fine.shape and got is not fine
    np.testing.assert_array_equal(got, _steps(fine, coarse, factor, iterations, sigma))
    twin = sensor.back_project_torch(torch.from_numpy(fine), torch.from_numpy(coarse), factor, iterations,
                                     psf_sigma=sigma)
    np.testing.assert_allclose(twin.numpy(), got, rtol=0, atol=2e-6)
    if iterations:
        before = np.abs(sensor.degrade(fine, factor, psf_sigma=sigma) - coarse).mean()
        assert np.abs(sensor.degrade(got, factor, psf_sigma=sigma) - coarse).mean() < 0.75 * before
    fine[0, 0, 1, 5, 7] = np.nan  # nodata: NaN-aware, as the sensor model
    np.testing.assert_array_equal(sensor.back_project(fine, coarse, factor, iterations, psf_sigma=sigma),
                                  _steps(fine, coarse, factor, iterations, sigma))


def test_torch_twins_are_degrade_and_bicubic_and_differentiable():
    import torch

    x = np.random.default_rng(4).random((2, 3, 32, 24), dtype=np.float32)
    np.testing.assert_allclose(sensor.degrade_torch(torch.from_numpy(x), 2, psf_sigma=0.85).numpy(),
                               sensor.degrade(x, 2, psf_sigma=0.85), rtol=0, atol=1e-6)
    np.testing.assert_allclose(sensor.bicubic_upsample_torch(torch.from_numpy(x), 4).numpy(),
                               sensor.bicubic_upsample(x, 4), rtol=0, atol=1e-6)
    fine, coarse = torch.from_numpy(x).double().requires_grad_(), torch.zeros(2, 3, 8, 6, dtype=torch.float64)
    g, v = torch.rand_like(fine), torch.rand_like(fine)  # an affine map: <grad, v> = <g, f(x + v) - f(x)>
    (sensor.back_project_torch(fine, coarse, 4, 2) * g).sum().backward()
    with torch.no_grad():
        jv = sensor.back_project_torch(fine + v, coarse, 4, 2) - sensor.back_project_torch(fine, coarse, 4, 2)
    assert float((fine.grad * v).sum()) == pytest.approx(float((g * jv).sum()), rel=1e-9)
    with pytest.raises(ValueError, match="not a multiple of factor"):
        sensor.degrade_torch(torch.zeros(1, 10, 12))
