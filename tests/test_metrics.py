"""xr_opensr.metrics: known values, NaN handling, xarray layout, references (scipy, skimage, torch)."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from xr_opensr import metrics as M

ROOT = Path(__file__).resolve().parents[1]
# rioxarray's own use of affine 3 (`Affine * Affine`) when reading transforms
pytestmark = pytest.mark.filterwarnings("ignore:Use `@` matmul:PendingDeprecationWarning")


def _img(seed: int = 0, shape=(2, 4, 24, 28)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(0.02, 0.4, shape).astype(np.float32)


def _cube(values: np.ndarray, dims=("time", "band", "y", "x")) -> xr.DataArray:
    coords = {"band": ["B04", "B03", "B02", "B08"][: values.shape[dims.index("band")]]} if "band" in dims else {}
    return xr.DataArray(values, dims=dims, coords=coords)


# --------------------------------------------------------------------------- PSNR


def test_psnr_of_a_known_mse():
    target = np.zeros((4, 8, 8), np.float32)
    assert M.psnr(target + 0.1, target) == pytest.approx(20.0)
    assert M.psnr(target + 0.1, target, data_range=2.0) == pytest.approx(20 + 20 * np.log10(2))
    pred = target.copy()
    pred[0] = 0.1  # MSE 0.01 on one band of four
    np.testing.assert_allclose(M.psnr(pred, target, per_band=True), [20.0, np.inf, np.inf, np.inf])
    assert M.psnr(pred, target) == pytest.approx(10 * np.log10(1 / 0.0025))


def test_psnr_identical_is_inf_and_empty_is_nan():
    x = _img()
    assert M.psnr(x, x) == np.inf
    assert np.isnan(M.psnr(np.full((4, 4), np.nan), np.zeros((4, 4))))


def test_psnr_ignores_nan_pixels():
    target = np.zeros((1, 4, 4))
    pred = np.full((1, 4, 4), 0.1)
    pred[0, 0, :2] = np.nan
    target[0, 3, 3] = np.nan
    assert M.psnr(pred, target) == pytest.approx(20.0)


def test_psnr_xarray_keeps_time_and_band_on_request():
    pred, target = _cube(_img(1)), _cube(_img(2))
    out = M.psnr(pred, target)
    assert out.dims == ("time",) and out.sizes["time"] == 2
    np.testing.assert_allclose(out.values, [M.psnr(pred.values[i], target.values[i]) for i in range(2)])
    per = M.psnr(pred, target, per_band=True)
    assert per.dims == ("time", "band") and list(per.band.values) == ["B04", "B03", "B02", "B08"]
    # dim order of the target does not matter
    np.testing.assert_allclose(M.psnr(pred, target.transpose("x", "band", "time", "y")).values, out.values)


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="same shape"):
        M.psnr(np.zeros((4, 8, 8)), np.zeros((4, 8, 9)))
    with pytest.raises(TypeError, match="two DataArrays"):
        M.psnr(_cube(_img()), _img())


# --------------------------------------------------------------------------- SSIM


def test_ssim_of_identical_images_is_one():
    x = _img()
    assert M.ssim(x, x) == pytest.approx(1.0)
    np.testing.assert_allclose(M.ssim(x, x, per_band=True), np.ones(4))


def test_ssim_of_constant_images_has_the_closed_form():
    a, b = 0.2, 0.3
    c1 = 0.01**2
    expected = (2 * a * b + c1) / (a * a + b * b + c1)  # no variance: only the luminance term
    assert M.ssim(np.full((16, 16), a), np.full((16, 16), b)) == pytest.approx(expected)


def test_ssim_matches_skimage():
    skimage_metrics = pytest.importorskip("skimage.metrics")
    x = _img(0, (4, 32, 36))
    y = np.clip(x + np.random.default_rng(1).normal(0, 0.03, x.shape), 0, 1).astype(np.float32)
    ref = [skimage_metrics.structural_similarity(x[b], y[b], data_range=1.0, gaussian_weights=True, sigma=1.5,
                                                 use_sample_covariance=False) for b in range(4)]
    np.testing.assert_allclose(M.ssim(x, y, per_band=True), ref, rtol=1e-6)
    assert M.ssim(x, y) == pytest.approx(np.mean(ref), rel=1e-6)


def test_ssim_ignores_nan():
    x = _img(0, (4, 32, 32)).astype(np.float64)
    y = x.copy()
    y[:, 10:14, 3:20] = np.nan
    assert M.ssim(x, y) == pytest.approx(1.0)
    assert M.ssim(_cube(x, ("band", "y", "x")), _cube(y, ("band", "y", "x"))).item() == pytest.approx(1.0)


# --------------------------------------------------------------------------- SAM


def test_spectral_angle_known_values():
    spec = np.array([0.05, 0.08, 0.04, 0.4])[:, None, None] * np.ones((4, 5, 6))
    assert M.spectral_angle(3.0 * spec, spec) == pytest.approx(0.0, abs=1e-9)
    p = np.zeros((4, 1, 1))
    t = np.zeros((4, 1, 1))
    p[0], t[1] = 1, 1
    assert M.spectral_angle(p, t) == pytest.approx(90.0)
    p2 = np.zeros((2, 1, 1))
    p2[0] = 1
    assert M.spectral_angle(p2, np.ones((2, 1, 1))) == pytest.approx(45.0)


def test_spectral_angle_ignores_nan_and_zero_spectra():
    spec = np.ones((4, 2, 2))
    other = spec.copy()
    other[:, 0, 0] = [1, 0, 0, 0]  # 60 degrees away
    other[2, 1, 1] = np.nan
    spec[:, 0, 1] = 0  # no direction
    assert M.spectral_angle(other, spec) == pytest.approx(60.0 / 2)  # pixels (0,0) and (1,0) count
    with pytest.raises(ValueError, match="band"):
        M.spectral_angle(np.ones((4, 4)), np.ones((4, 4)))


# --------------------------------------------------------------------------- resampling and consistency


def test_area_downsample_values_and_nan():
    x = np.arange(64, dtype=np.float32).reshape(8, 8)
    out = M.area_downsample(x)
    assert out.shape == (2, 2) and out.dtype == np.float32
    assert out[0, 0] == pytest.approx(x[:4, :4].mean())
    x[5, 6] = np.nan
    out = M.area_downsample(x)
    assert np.isnan(out[1, 1]) and np.isfinite(out[[0, 0, 1], [0, 1, 0]]).all()
    with pytest.raises(ValueError, match="multiple of factor 4"):
        M.area_downsample(np.zeros((6, 8)))


def test_area_downsample_and_bicubic_dataarray_coords():
    from xr_opensr import testing

    lr = testing.s2_cube(8, 12, dtype="float32")
    up = M.bicubic_upsample(lr)
    assert up.sizes == {"band": 4, "y": 32, "x": 48}
    np.testing.assert_allclose(np.diff(up.x.values), 2.5)
    assert up.x.values[0] == pytest.approx(lr.x.values[0] - 5 + 1.25)
    assert up.rio.transform().a == pytest.approx(2.5) and up.rio.crs == lr.rio.crs
    assert tuple(up.rio.transform())[:6] == pytest.approx((2.5, 0, lr.rio.transform().c, 0, -2.5, lr.rio.transform().f))
    down = M.area_downsample(up)
    np.testing.assert_allclose(down.x.values, lr.x.values)
    np.testing.assert_allclose(down.y.values, lr.y.values)
    assert tuple(down.rio.transform()) == pytest.approx(tuple(lr.rio.transform()))
    assert 25 < M.reflectance_consistency(up, lr).item() < np.inf
    nearest = lr.interp(x=up.x, y=up.y, method="nearest", kwargs={"fill_value": "extrapolate"})
    assert M.reflectance_consistency(nearest, lr).item() == np.inf


def test_bicubic_matches_torch_with_its_kernel():
    torch = pytest.importorskip("torch")
    lr = _img(3, (2, 4, 7, 9))
    ref = torch.nn.functional.interpolate(torch.from_numpy(lr), scale_factor=4, mode="bicubic", align_corners=False)
    np.testing.assert_allclose(M.bicubic_upsample(lr, 4, a=-0.75), ref.numpy(), atol=1e-6)


def test_bicubic_keeps_constants_and_ramps_and_nan_blocks():
    assert np.allclose(M.bicubic_upsample(np.full((3, 5), 0.3)), 0.3)
    ramp = np.tile(np.arange(10, dtype=np.float64), (6, 1))  # x = column index
    up = M.bicubic_upsample(ramp, 4)
    centres = (np.arange(40) + 0.5) / 4 - 0.5
    np.testing.assert_allclose(up[8, 8:-8], centres[8:-8], atol=1e-12)  # cubic convolution is exact on lines
    lr = _img(4, (4, 6, 6))
    lr[:, 2, 3] = np.nan
    up = M.bicubic_upsample(lr)
    assert np.isnan(up[:, 8:12, 12:16]).all()
    assert np.isfinite(up).sum() == up.size - 4 * 16


def test_reflectance_consistency():
    lr = _img(5)
    nearest = np.repeat(np.repeat(lr, 4, axis=-2), 4, axis=-1)
    assert M.reflectance_consistency(nearest, lr) == np.inf
    cubic = M.bicubic_upsample(lr)
    assert 25 < M.reflectance_consistency(cubic, lr) < np.inf
    noisy = nearest + 0.01
    assert M.reflectance_consistency(noisy, lr) == pytest.approx(40.0, abs=1e-3)


def test_gaussian_filter_matches_scipy_and_skips_nan():
    ndimage = pytest.importorskip("scipy.ndimage")
    x = _img(6, (3, 21, 17)).astype(np.float64)
    np.testing.assert_allclose(M.gaussian_filter(x, 1.7), ndimage.gaussian_filter(x, (0, 1.7, 1.7), mode="reflect"),
                               atol=1e-12)
    flat = np.full((9, 9), 0.25)
    flat[4, 4] = np.nan
    out = M.gaussian_filter(flat, 2.0)
    assert np.isnan(out[4, 4]) and np.allclose(np.delete(out.ravel(), 40), 0.25)


def test_gradient_magnitude():
    ramp = np.tile(np.arange(8, dtype=np.float64) * 0.5, (5, 1))
    np.testing.assert_allclose(M.gradient_magnitude(ramp), 0.5)
    cube = _cube(_img(7, (4, 6, 6)), ("band", "y", "x"))
    out = M.gradient_magnitude(cube)
    assert out.dims == cube.dims and out.shape == cube.shape


# --------------------------------------------------------------------------- uncertainty


def test_uncertainty_calibration_known_values():
    err = np.random.default_rng(0).normal(0, 0.02, (4, 16, 16))
    res = M.uncertainty_calibration(np.abs(err), err)
    assert res["spearman"] == pytest.approx(1.0) and res["coverage_2std"] == 1.0 and res["n"] == err.size
    assert M.uncertainty_calibration(np.abs(err) / 1.99, err)["coverage_2std"] == 1.0
    assert M.uncertainty_calibration(np.abs(err) / 2.01, err)["coverage_2std"] == 0.0
    assert M.uncertainty_calibration(-np.abs(err), err)["spearman"] == pytest.approx(-1.0)
    assert "coverage_1std" in M.uncertainty_calibration(np.abs(err), err, k=1)


def test_uncertainty_calibration_ties_and_nan():
    import pandas as pd

    rng = np.random.default_rng(1)
    std = np.round(rng.uniform(0, 1, 500), 1)  # many ties
    err = std + rng.normal(0, 0.3, 500)
    res = M.uncertainty_calibration(std, err)
    ranks = pd.DataFrame({"s": std, "e": np.abs(err)}).rank()  # average ranks of ties, as scipy
    assert res["spearman"] == pytest.approx(np.corrcoef(ranks["s"], ranks["e"])[0, 1], rel=1e-12)
    std[:10] = np.nan
    assert M.uncertainty_calibration(std, err)["n"] == 490
    assert np.isnan(M.uncertainty_calibration(np.ones(5), np.arange(5.0))["spearman"])


# --------------------------------------------------------------------------- LPIPS (optional)


def test_lpips_never_downloads_and_checks_inputs(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty cache: no ImageNet trunk
    assert M._resolve_lpips_net("auto") == "stlpips-alex"
    x = _img(8, (2, 4, 32, 32))
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        M.lpips(x, x, net="lpips-alex")
    with pytest.raises(ValueError, match="32 x 32"):
        M.lpips(x[..., :16, :16], x[..., :16, :16], net="stlpips-alex")
    with pytest.raises(ValueError, match="unknown LPIPS net"):
        M.lpips(x, x, net="resnet")
    with pytest.raises(ValueError, match="unknown LPIPS net"):
        M.lpips_network("auto")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow  # importing torchvision takes 5-10 s
def test_lpips_shipped_shift_tolerant_weights(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    pytest.importorskip("stlpips_pytorch")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    x = _img(8, (2, 4, 32, 32))
    rng = np.random.default_rng(9)
    near = np.clip(x + rng.normal(0, 0.02, x.shape), 0, 1)
    far = np.clip(x + rng.normal(0, 0.1, x.shape), 0, 1)
    same, info = M.lpips(x, x, return_info=True)
    assert info["net"] == "stlpips-alex" and info["reflectance_max"] == 0.4
    assert same == pytest.approx(0.0, abs=1e-6)
    assert 0 < M.lpips(x, near, net="stlpips-alex") < M.lpips(x, far, net="stlpips-alex")
    cube = xr.DataArray(x, dims=("time", "band", "y", "x"), coords={"band": ["B04", "B03", "B02", "B08"]})
    assert M.lpips(cube, cube.copy(data=far)) == pytest.approx(M.lpips(x, far))
    net = M.lpips_network("stlpips-alex")  # a fresh module for training losses, not the shared one
    assert net is not M.lpips_network("stlpips-alex") and not any(p.requires_grad for p in net.parameters())
    assert list(tmp_path.iterdir()) == []  # nothing was downloaded


# --------------------------------------------------------------------------- layering


@pytest.mark.parametrize("module", ["metrics.py", "testing.py", "sensor.py", "_layout.py", "_lpips.py",
                                    "_opensrtest.py"])
def test_library_modules_import_neither_torch_nor_training_at_module_level(module):
    tree = ast.parse((ROOT / "xr_opensr" / module).read_text())
    names = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    assert not names & {"torch", "training", "lpips", "stlpips_pytorch", "scipy"}


def test_every_name_of_the_split_modules_is_still_a_metrics_name():
    from xr_opensr import _lpips, _opensrtest, sensor

    moved = ("area_downsample", "bicubic_upsample", "gaussian_filter")  # sensor's other names never were metrics
    for module, names in ((sensor, moved), (_opensrtest, _opensrtest.__all__)):
        assert set(names) <= set(module.__all__)
        for name in names:
            assert getattr(M, name) is getattr(module, name) and name in M.__all__
    for name in ("LPIPS_BANDS", "LPIPS_NETS", "lpips_network"):
        assert getattr(M, name) is getattr(_lpips, name)
