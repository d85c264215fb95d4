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
