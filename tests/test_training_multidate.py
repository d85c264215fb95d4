"""The multi-date model's training helpers (training/multidate.py): simulated looks and the std ratio fit."""

from __future__ import annotations

import dataclasses

import numpy as np

from training.multidate import LookSimulation, fit_std_ratio, simulate_looks
from xr_opensr import sensor
from xr_opensr.testing import synthetic_scene


def _hr(seed: int = 3) -> np.ndarray:
    return np.asarray(synthetic_scene((64, 64), seed=seed), dtype=np.float32)[:4]


def test_the_reference_look_is_the_plain_observation_and_the_others_move():
    hr = _hr()
    clear = LookSimulation(cloud=0.0, noise=(0.0005, 0.0005))
    looks, shifts = simulate_looks(hr, 5, 0, clear, return_shifts=True)
    assert looks.shape == (5, 4, 16, 16) and looks.dtype == np.float32 and np.isfinite(looks).all()
    assert (shifts[0] == 0).all() and (np.abs(shifts[1:]) > 0).all()  # HR pixels; the reference unshifted
    plain = sensor.degrade(hr, 4)
    assert np.abs(looks[0] - plain).std() < 0.001  # noise only
    assert all(np.abs(looks[j] - plain).mean() > np.abs(looks[0] - plain).mean() for j in range(1, 5))
    again = simulate_looks(hr, 5, 0, clear)
    np.testing.assert_array_equal(looks, again)  # seeded


def test_clouds_are_masked_or_left_bright_and_never_on_the_reference():
    hr = _hr()
    masked = simulate_looks(hr, 12, 1, LookSimulation(cloud=1.0, unmasked=0.0))
    assert np.isfinite(masked[0]).all() and all(np.isnan(masked[j]).any() for j in range(1, 12))
    bright = simulate_looks(hr, 12, 1, LookSimulation(cloud=1.0, unmasked=1.0))
    assert np.isfinite(bright).all()
    assert all(np.nanmax(bright[j] - masked[0]) > 0.1 for j in range(1, 12))  # an unmasked cloud is bright


def test_a_change_is_on_the_looks_asked_for_only():
    hr = _hr()
    sim = dataclasses.replace(LookSimulation(), cloud=0.0)
    box = (24, 40, 24, 40)
    with_obj = simulate_looks(hr, 5, 2, sim, change_box=box, change_looks=2)
    without = simulate_looks(hr, 5, 2, sim)
    diff = np.abs(with_obj - without).max(axis=(1, 2, 3))
    assert diff[0] == 0 and diff[3] == 0 and diff[4] == 0 and diff[1] > 0.05 and diff[2] > 0.05


def test_the_std_ratio_is_one_for_one_look_and_follows_the_errors():
    rng = np.random.default_rng(0)
    looks = np.repeat(np.arange(1, 5), 25)[None].repeat(100, 0)  # (100, 100): 1..4 looks by column block
    std = np.full((1, 4, 100, 100), 0.01, dtype=np.float32)
    err = rng.normal(0, 0.005, (1, 4, 100, 100)) / np.sqrt(looks)[None, None]  # errors shrink with the looks
    hr = np.zeros((1, 4, 100, 100), dtype=np.float32)
    rec = {"md": (hr + err).astype(np.float32), "hr": hr, "sd_std": std, "looks": looks[None].astype(np.uint8)}
    ratio = fit_std_ratio({4: rec}, most=6)
    assert ratio[0] == 1.0 and len(ratio) == 6
    np.testing.assert_allclose(ratio[:4], 1 / np.sqrt(np.arange(1, 5)), rtol=0.1)
    assert ratio[4] == ratio[5] == ratio[3]  # no pixels with 5 or 6 looks: the last fitted entry


def test_temporal_test_scores_the_truth_best_on_the_own_detail():
    """The temporal-consistency figure: on the SR's own detail the truth of each date differs least between
    dates (only its sampling phase); on the detail against each date's LR the truth is no better than
    single-date (it counts the LR's noise): why the headline uses the own detail."""
    from training.multidate import temporal_test

    hr = np.asarray(synthetic_scene((96, 96), seed=3), dtype=np.float32)[:4]
    t = temporal_test([hr], "multidate", dataclasses.replace(LookSimulation(), cloud=0.0), dates=3, border=8)
    assert all(np.isfinite(v) for v in t.values())
    assert t["ratio_truth"] < t["ratio"] < 1.0
    assert t["ratio_lr_truth"] > t["ratio_truth"]
