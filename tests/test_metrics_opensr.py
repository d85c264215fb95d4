"""The opensr-test metric family: parity with the opensr-test package, NaN handling, xarray layout.

opensr-test (installed by the ``test`` extra) is imported directly: without it these tests fail,
they are never skipped. Its ND-distance path downloads nothing.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import xarray as xr

from xr_opensr import metrics as M
from xr_opensr.errors import BandError, InputError
from xr_opensr.testing import synthetic_scene

with warnings.catch_warnings():  # torchvision / kornia import-time notices
    warnings.simplefilter("ignore")
    import torch
    from opensr_test import Config, Metrics

TOL = 1e-5
NAMES = {"reflectance": "reflectance", "spectral": "spectral", "spatial": "spatial",
         "synthesis": "synthesis", "ha_metric": "hallucination", "om_metric": "omission",
         "im_metric": "improvement"}


def _triplet(seed: int, kind: str, size: int = 128, scale: int = 4):
    """Seeded (sr, lr, hr) float64 arrays (4, H, W): an S2-like scene, its area-mean LR and an SR."""
    hr = synthetic_scene((size, size), seed).astype(np.float64)
    lr = M.area_downsample(hr, scale)
    bicubic = M.bicubic_upsample(lr, scale)
    noise = np.random.default_rng(seed).normal(0.0, 1.0, hr.shape)
    sr = {"bicubic": bicubic,
          "noisy": hr + 0.01 * noise,
          "shifted": np.roll(bicubic, (2, -1), axis=(1, 2)) + 0.003 * noise,  # a sub-LR-pixel offset
          "blend": 0.6 * bicubic + 0.4 * hr + 0.002 * noise,
          "far": np.roll(bicubic, (0, 28), axis=(1, 2))}[kind]  # 7 LR pixels: registration fails
    return sr, lr, hr


def _reference(sr, lr, hr, **config) -> dict[str, float]:
    """opensr-test's own numbers (float64 tensors: its float32 arccos would add ~1e-4 degree noise)."""
    def t(a):
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = Metrics(Config(**config)).compute(lr=t(lr), sr=t(sr), hr=t(hr))
    return {NAMES[k]: v for k, v in out.items()}


def _assert_parity(ours: dict, ref: dict) -> None:
    assert set(ours) == set(ref)
    for key, value in ref.items():
        if np.isnan(value):
            assert np.isnan(ours[key]), key
        else:
            assert abs(ours[key] - value) <= TOL, (key, ours[key], value)


# --------------------------------------------------------------------------- parity


@pytest.mark.parametrize("seed, kind", [(0, "bicubic"), (1, "noisy"), (2, "shifted"), (3, "blend")])
def test_parity_with_opensr_test_defaults(seed, kind):
    sr, lr, hr = _triplet(seed, kind)
    ref = _reference(sr, lr, hr)
    ours = M.opensr_test_metrics(sr, lr, hr)
    _assert_parity(ours, ref)
    assert ours["hallucination"] + ours["omission"] + ours["improvement"] == pytest.approx(1.0)
    if kind == "shifted":
        assert ref["spatial"] > 0.3  # the case exercises a real sub-pixel registration
    if kind == "bicubic":
        assert ours["omission"] > ours["improvement"]  # bicubic adds nothing: mostly omission


@pytest.mark.parametrize("options, config", [
    ({"harmonize": False, "align": False}, {"harm_apply_spectral": False, "harm_apply_spatial": False}),
    ({"border": 8, "temperature": 0.5}, {"border_mask": 8, "correctness_temperature": 0.5}),
    ({"border": 0}, {"border_mask": 0}),
])
def test_parity_with_opensr_test_options(options, config):
    sr, lr, hr = _triplet(5, "shifted")
    _assert_parity(M.opensr_test_metrics(sr, lr, hr, **options), _reference(sr, lr, hr, **config))


def test_parity_of_a_fixed_threshold_scale_2_and_float32_data():
    sr, lr, hr = _triplet(6, "blend", size=96, scale=2)
    sr, lr, hr = (a.astype(np.float32) for a in (sr, lr, hr))
    ref = _reference(sr, lr, hr)
    _assert_parity(M.opensr_test_metrics(sr, lr, hr), ref)
    # opensr-test's correctness() with an absolute threshold on the ND distances
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        args = [torch.from_numpy(a.astype(np.float64)) for a in (lr, sr, hr)]
        fixed = Metrics().correctness(*args, gradient_threshold=0.05)
    ours = M.opensr_test_metrics(sr, lr, hr, threshold=0.05)
    for key in ("ha_metric", "om_metric", "im_metric"):
        assert abs(ours[NAMES[key]] - fixed[key]) <= TOL


def test_a_failed_registration_gives_nan_spatial_as_opensr_test():
    sr, lr, hr = _triplet(7, "far")
    ref = _reference(sr, lr, hr)
    assert np.isnan(ref["spatial"])
    _assert_parity(M.opensr_test_metrics(sr, lr, hr), ref)


def test_two_bands_use_the_first_for_registration_as_opensr_test():
    sr, lr, hr = (a[[0, 3]] for a in _triplet(8, "shifted"))
    _assert_parity(M.opensr_test_metrics(sr, lr, hr), _reference(sr, lr, hr))


# --------------------------------------------------------------------------- NaN


def test_a_nodata_margin_equals_cropping_it_away():
    """NaN columns on the right give the numbers of the image without them (border 0, no shift:
    resampling drops the missing taps exactly as it drops taps past the image edge)."""
    sr, lr, hr = _triplet(9, "blend", size=160)
    cut = (slice(None), slice(None), slice(0, 128))
    cut_lr = (slice(None), slice(None), slice(0, 32))
    nan_sr, nan_lr, nan_hr = sr.copy(), lr.copy(), hr.copy()
    nan_sr[..., 128:] = nan_hr[..., 128:] = nan_lr[..., 32:] = np.nan
    nan_hr[1, 5, 7] = np.nan  # one band of one pixel: the whole pixel is left out
    ref_hr = hr[cut].copy()
    ref_hr[1, 5, 7] = np.nan
    opts = {"border": 0, "align": False}
    with_nan = M.opensr_test_metrics(nan_sr, nan_lr, nan_hr, **opts)
    cropped = M.opensr_test_metrics(sr[cut], lr[cut_lr], ref_hr, **opts)
    for key in ("reflectance", "spectral", "synthesis", "hallucination", "omission", "improvement"):
        assert with_nan[key] == pytest.approx(cropped[key], rel=1e-9, abs=1e-12), key
    full = M.opensr_test_metrics(nan_sr, nan_lr, nan_hr)  # defaults: finite, registration included
    assert all(np.isfinite(v) for v in full.values())


def test_cloud_holes_stay_out_and_an_empty_image_is_nan():
    sr, lr, hr = _triplet(10, "noisy")
    hr[:, 40:60, 50:90] = np.nan  # a masked cloud in the reference only
    out = M.opensr_test_metrics(sr, lr, hr)
    assert all(np.isfinite(v) for v in out.values())
    empty = M.opensr_test_metrics(np.full_like(sr, np.nan), lr, hr)
    assert all(np.isnan(v) for v in empty.values())


# --------------------------------------------------------------------------- layout


def _stack(arrays, labels, dims=("time", "band", "y", "x")):
    return xr.DataArray(np.stack(arrays), dims=dims, coords={"time": [10, 20, 30], "band": labels})


def test_xarray_keeps_other_dims_picks_rgb_by_label_and_numpy_averages():
    triplets = [_triplet(11, "blend"), _triplet(12, "shifted"), _triplet(13, "noisy")]
    order = [3, 2, 1, 0]  # B08, B02, B03, B04: RGB are found by their labels
    labels = [["B04", "B03", "B02", "B08"][i] for i in order]
    sr, lr, hr = (_stack([t[k][order] for t in triplets], labels) for k in range(3))
    sr.values[1] = np.nan  # the second time step has no valid pixel
    lr = lr.rename({"y": "lr_y", "x": "lr_x"}).transpose("band", "time", "lr_y", "lr_x")
    ds = M.opensr_test_metrics(sr, lr, hr)
    assert isinstance(ds, xr.Dataset) and set(ds.data_vars) == set(M.OPENSR_TEST_METRICS)
    assert ds["improvement"].dims == ("time",) and list(ds.time.values) == [10, 20, 30]
    assert ds["spectral"].attrs["units"].startswith("degree")
    for i in (0, 2):
        one = M.opensr_test_metrics(*(a[order] for a in triplets[i]), rgb=[3, 2, 1])
        for key, value in one.items():
            assert ds[key].values[i] == pytest.approx(value, rel=1e-12, nan_ok=True)
        _assert_parity(one, _reference(*triplets[i]))  # rgb by index == opensr-test's band order
    assert all(np.isnan(ds[key].values[1]) for key in ds.data_vars)
    pooled = M.opensr_test_metrics(sr.values, lr.transpose("time", "band", ...).values, hr.values,
                                   rgb=[3, 2, 1])
    assert pooled["synthesis"] == pytest.approx(float(ds["synthesis"].mean()))  # NaN image left out


def test_consistency_alone_without_a_reference():
    sr, lr, hr = _triplet(14, "blend")
    alone = M.opensr_test_metrics(sr, lr)
    assert set(alone) == {"reflectance", "spectral", "spatial"}
    full = M.opensr_test_metrics(sr, lr, hr)
    assert all(alone[k] == full[k] for k in alone)


def test_bad_inputs_raise_typed_errors():
    sr, lr, hr = _triplet(15, "blend", size=64)
    with pytest.raises(InputError, match="integer multiple"):
        M.opensr_test_metrics(sr[..., :62], lr, hr[..., :62])
    with pytest.raises(InputError, match="shape of sr"):
        M.opensr_test_metrics(sr, lr, hr[:3])
    with pytest.raises(InputError, match="multiple of the scale 4"):
        M.opensr_test_metrics(sr, lr, hr, border=6)
    with pytest.raises(InputError, match="border=0"):
        M.opensr_test_metrics(sr, lr, hr, border=32)
    with pytest.raises(InputError, match="temperature"):
        M.opensr_test_metrics(sr, lr, hr, temperature=0)
    with pytest.raises(BandError, match="3 band indices"):
        M.opensr_test_metrics(sr, lr, hr, rgb=[0, 1])
    with pytest.raises(InputError, match="band, y, x"):
        M.opensr_test_metrics(sr[0], lr[0], hr[0])
    cube = xr.DataArray(sr, dims=("band", "y", "x"))
    with pytest.raises(TypeError, match="not a mix"):
        M.opensr_test_metrics(cube, lr, hr)
    with pytest.raises(BandError, match="same band dim"):
        M.opensr_test_metrics(cube, xr.DataArray(lr, dims=("channel", "y", "x")))
    with pytest.raises(InputError, match="non-spatial dims"):
        M.opensr_test_metrics(cube, xr.DataArray(lr[None], dims=("time", "band", "y", "x")))
