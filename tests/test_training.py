"""training/: losses, loop machinery, tiny overfits, kill-and-resume, export -> load_model round trip.

Fast (CPU, tiny config, a handful of seeded patches made in code); the real training data module is
exercised by one shape test.
"""

from __future__ import annotations

import json
import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

pytest.importorskip("lpips")

from training_pairs import _Pairs  # noqa: E402  (tests/: a module the data workers import cheaply)

import training.loop as loop  # noqa: E402
from training import losses  # noqa: E402
from training.config import TrainConfig  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "training" / "configs" / "tiny.json"
DEFAULT = ROOT / "training" / "configs" / "default.json"


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def tiny(monkeypatch) -> Iterator[TrainConfig]:
    """The tiny config, on 4 seeded training patches (and seeded validation/test patches)."""
    cfg = TrainConfig.from_json(TINY)
    monkeypatch.setattr(loop, "training_dataset", lambda cfg: _Pairs(4, cfg.hr_patch))
    monkeypatch.setattr(loop, "synthetic_pairs",
                        lambda cfg, first, n: loop._stack(_Pairs(n, cfg.hr_patch, first)))
    monkeypatch.setattr(loop, "heldout_pairs", lambda cfg, n: loop._stack(_Pairs(n, cfg.hr_patch, 777)))
    for module in ("training.autoencoder", "training.diffusion", "training.evaluate"):
        mod = __import__(module, fromlist=["x"])
        for name in ("training_dataset", "synthetic_pairs", "heldout_pairs"):
            if hasattr(mod, name):
                monkeypatch.setattr(mod, name, getattr(loop, name))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield cfg
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------- config


def test_configs_round_trip(tmp_path):
    for path in (TINY, DEFAULT):
        cfg = TrainConfig.from_json(path)
        cfg.to_json(tmp_path / "c.json")
        assert TrainConfig.from_json(tmp_path / "c.json") == cfg
        assert cfg.model.autoencoder.downsampling == 4 == cfg.model.scale
    with pytest.raises(ValueError, match="unknown keys"):
        TrainConfig.from_dict({"autoencoder": {"stepz": 3}})
    with pytest.raises(ValueError, match="target"):
        TrainConfig.from_json(TINY).replace(diffusion={"target": "x"})


# --------------------------------------------------------------------------- losses


def _finite_with_grad(value: torch.Tensor, x: torch.Tensor) -> None:
    assert torch.isfinite(value).all()
    (grad,) = torch.autograd.grad(value.sum(), x, retain_graph=True)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_losses_are_finite_and_differentiable():
    torch.manual_seed(0)
    target = torch.rand(2, 4, 32, 32) * 0.3
    x = (target + 0.05 * torch.randn_like(target)).requires_grad_()
    for divergence in ("wasserstein", "symmetric_kl"):
        _finite_with_grad(losses.histogram_loss(x, target, bins=16, divergence=divergence), x)
    _finite_with_grad(losses.build_perceptual("lpips-rand", nir=True)(x, target), x)
    disc = losses.NLayerDiscriminator(4, 8, 2)
    logits = disc(x)
    _finite_with_grad(losses.hinge_g_loss(logits), x)
    _finite_with_grad(losses.hinge_d_loss(disc(target), logits), x)

    from xr_opensr.models.autoencoder import AutoencoderConfig, AutoencoderKL

    ae = AutoencoderKL(AutoencoderConfig(ch=8, num_res_blocks=1, num_groups=4))
    xi = target.clone().requires_grad_()
    post = ae.encode(xi)
    rec = ae.decode(post.sample())
    _finite_with_grad(losses.kl_loss(post, xi[0].numel()), xi)
    nll = (rec - target).abs().mean()
    g = losses.hinge_g_loss(disc(rec))
    w = losses.adaptive_weight(nll, g, ae.decoder.conv_out.weight)
    assert torch.isfinite(w) and w > 0 and not w.requires_grad


def test_soft_histogram_matches_hard_histogram():
    x = torch.rand(1, 1, 64, 64)
    lo, hi = torch.zeros(1, 1), torch.ones(1, 1)
    soft = losses.soft_histogram(x, lo, hi, bins=8, bandwidth=0.2)[0, 0]
    hard = torch.histc(x, bins=8, min=0, max=1) / x.numel()
    assert torch.allclose(soft.sum(), torch.tensor(1.0))
    assert (soft - hard).abs().max() < 0.02
    shifted = losses.histogram_loss(x + 0.3, x, bins=32)
    assert shifted > 10 * losses.histogram_loss(x + 0.001, x, bins=32)


def test_perceptual_nets_never_touch_the_network(monkeypatch, tmp_path):
    """LPIPS set-up makes no download or connection attempt, with or without the trunk in the cache."""
    calls = []

    def forbid(*args, **kwargs):
        calls.append(args[:1])
        raise AssertionError("network access attempted")

    monkeypatch.setattr(torch.hub, "download_url_to_file", forbid)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", forbid)
    monkeypatch.setattr(urllib.request, "urlopen", forbid)
    monkeypatch.setattr(socket.socket, "connect", forbid)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    assert losses.build_perceptual("none") is None
    for name in ("stlpips-alex", "lpips-rand"):
        assert losses.build_perceptual(name) is not None
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        losses.build_perceptual("lpips-alex")
    # with the ImageNet trunk in the local cache, it is read from there
    import torchvision

    cache = Path(torch.hub.get_dir()) / "checkpoints" / "alexnet-owt-7be5be79.pth"
    cache.parent.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), cache)
    net = losses.build_perceptual("lpips-alex")
    assert torch.equal(net.net.net.slice1[0].weight, torch.load(cache)["features.0.weight"])
    assert not calls


# --------------------------------------------------------------------------- loop machinery


def test_ema_and_sampler_are_deterministic():
    lin = torch.nn.Linear(2, 2)
    ema = loop.EMA(lin, decay=0.5)
    with torch.no_grad():
        lin.weight.add_(1.0)
    ema.update(lin)
    decay = min(0.5, 2 / 11)
    expected = (lin.weight - 1.0) * decay + lin.weight * (1 - decay)
    assert torch.allclose(ema.shadow["weight"], expected)
    data = _Pairs(5, 16)
    a, b = loop.PairSampler(data, seed=3), loop.PairSampler(data, seed=3)
    seq = [a.indices(k, 2) for k in range(6)]
    assert seq == [b.indices(k, 2) for k in reversed(range(6))][::-1]
    first_epoch = sum(seq[:2], []) + seq[2][:1]
    assert sorted(first_epoch) == list(range(5))  # without replacement within an epoch


def test_data_workers_make_the_same_batches(tiny):
    data = _Pairs(6, 16)
    serial, parallel = loop.PairSampler(data, seed=2), loop.PairSampler(data, seed=2, workers=2)
    try:
        for step in (0, 1, 2, 5, 3):  # in order (prefetched) and out of order
            for a, b in zip(serial.batch(step, 4), parallel.batch(step, 4), strict=True):
                assert torch.equal(a, b)
        assert torch.equal(parallel.items([4, 1])[0], serial.items([4, 1])[0])
    finally:
        parallel.close()
    with pytest.raises(ValueError, match="workers"):
        loop.PairSampler(data, workers=-1)


def test_latent_standardisation_keeps_the_decoder_output(tiny):
    from training.autoencoder import fold_latent_standardisation
    from xr_opensr.models.autoencoder import AutoencoderKL

    torch.manual_seed(0)
    ae = AutoencoderKL(tiny.model.autoencoder).eval()
    x = torch.randn(2, 4, 32, 32)
    with torch.no_grad():
        before = ae.decode(ae.encode(x).mode())
        mean, std = torch.tensor([0.5, -1.0, 2.0, 0.0]), torch.tensor([2.0, 0.5, 3.0, 1.0])
        z = ae.encode(x)
        fold_latent_standardisation(ae, mean, std)
        z2 = ae.encode(x)
        after = ae.decode(z2.mode())
    assert torch.allclose(z2.mean, (z.mean - mean[:, None, None]) / std[:, None, None], atol=1e-5)
    assert torch.allclose(z2.std, z.std / std[:, None, None], rtol=1e-4)
    assert torch.allclose(before, after, atol=1e-5)


# --------------------------------------------------------------------------- tiny overfits


def test_tiny_autoencoder_overfits(tiny):
    from training.autoencoder import AutoencoderStage

    cfg = tiny.replace(autoencoder={"lr": 3e-3, "steps": 60, "warmup_steps": 1, "disc_weight": 0.0,
                                    "perceptual_weight": 0.0, "perceptual_net": "none"})
    sampler = loop.PairSampler(_Pairs(4, cfg.hr_patch), seed=0)
    stage = AutoencoderStage(cfg, torch.device("cpu"), sampler, loop.synthetic_pairs(cfg, 0, 2))
    first = [stage.train_step(k)["l1"] for k in range(3)]
    for k in range(3, 57):
        stage.train_step(k)
    last = [stage.train_step(k)["l1"] for k in range(57, 60)]
    assert np.mean(last) < 0.5 * np.mean(first)


def test_tiny_diffusion_overfits(tiny, tmp_path):
    from safetensors.torch import save_file

    from training.diffusion import DiffusionStage
    from xr_opensr.models import SRModel

    torch.manual_seed(0)
    ae_path = tmp_path / "ae.safetensors"
    save_file(SRModel(tiny.model).autoencoder.state_dict(), str(ae_path))
    cfg = tiny.replace(diffusion={"lr": 3e-3, "steps": 150, "warmup_steps": 1, "cache_pairs": 4, "batch_size": 4})
    sampler = loop.PairSampler(_Pairs(4, cfg.hr_patch), seed=0)
    stage = DiffusionStage(cfg, torch.device("cpu"), sampler, loop.synthetic_pairs(cfg, 0, 2), ae_path)

    def held_loss() -> float:  # the same timesteps and noise before and after
        with torch.no_grad():
            return float(np.mean([stage.loss(stage.cache, loop.step_generator(9, "eval", i)).item()
                                  for i in range(8)]))

    before = held_loss()
    for k in range(cfg.diffusion.steps):
        stage.train_step(k)
    assert held_loss() < 0.5 * before


# --------------------------------------------------------------------------- resume


@pytest.mark.parametrize("stage_name", ["autoencoder", "diffusion"])
def test_kill_and_resume_gives_the_same_weights(tiny, tmp_path, stage_name):
    from training.autoencoder import train_autoencoder
    from training.diffusion import train_diffusion

    cfg = tiny.replace(run={"sample_every": 0})  # no previews: keep it fast
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    if stage_name == "diffusion":  # both runs start from the same stage-1 autoencoder
        train_autoencoder(cfg.replace(autoencoder={"steps": 2}), straight, progress=False)
        (resumed / "autoencoder").mkdir(parents=True)
        for f in (straight / "autoencoder").iterdir():
            if f.is_file():
                (resumed / "autoencoder" / f.name).write_bytes(f.read_bytes())
    train = train_autoencoder if stage_name == "autoencoder" else train_diffusion
    train(cfg, straight, progress=False)
    train(cfg, resumed, progress=False, stop_at=3)  # "killed" after 3 of 6 steps
    with pytest.raises(FileExistsError, match="--resume"):
        train(cfg, resumed, progress=False)
    train(cfg, resumed, resume=True, progress=False)
    a = loop.load_checkpoint(straight / stage_name / loop.CHECKPOINT)
    b = loop.load_checkpoint(resumed / stage_name / loop.CHECKPOINT)
    assert a["step"] == b["step"] == 6

    def same(x, y) -> bool:
        if isinstance(x, torch.Tensor):
            return torch.equal(x, y)
        if isinstance(x, dict):
            return x.keys() == y.keys() and all(same(x[k], y[k]) for k in x)
        if isinstance(x, list | tuple):
            return len(x) == len(y) and all(same(u, v) for u, v in zip(x, y))
        return x == y

    assert same(a["stage"], b["stage"])  # weights, optimiser, EMA, discriminator
    rows = list((resumed / stage_name / loop.METRICS).read_text().splitlines())
    assert [r.split(",")[0] for r in rows[1:]] == ["2", "4", "6"]


# --------------------------------------------------------------------------- export


def test_cli_export_load_model_round_trip(tiny, tmp_path, cube_factory):
    import xr_opensr
    from training.__main__ import main
    from xr_opensr.models.io import CARD_FILE

    run = tmp_path / "run"
    config = tmp_path / "tiny.json"
    tiny.replace(run={"sample_every": 0}).to_json(config)
    common = ["--config", str(config), "--out", str(run), "--no-progress"]
    assert main(["autoencoder", *common, "--steps", "2"]) == 0
    assert main(["diffusion", *common, "--steps", "2"]) == 0
    assert main(["export", *common]) == 0
    assert main(["export", *common]) == 2  # refuses to overwrite
    folder = run / "model"
    net = xr_opensr.load_model(str(folder), device="cpu")
    card = (folder / CARD_FILE).read_text()
    assert "lpips-rand" in card and "python -m training autoencoder" in card
    ckpt = loop.load_checkpoint(run / "diffusion" / loop.CHECKPOINT)
    for k, v in ckpt["stage"]["ema"]["shadow"].items():  # the exported UNet is the EMA
        assert torch.equal(net.denoiser.state_dict()[k], v)
    lr = np.random.default_rng(0).uniform(0.02, 0.3, (1, 4, 8, 8)).astype(np.float32)
    out = net.sample(lr, samples=2, steps=2, seed=0)
    assert out.shape == (1, 2, 4, 32, 32) and np.isfinite(out).all()

    assert main(["evaluate", *common]) == 0
    metrics = json.loads((folder / "metrics.json").read_text())
    scale = metrics["summary"]["std_scale"]
    assert scale > 0 and xr_opensr.load_model(str(folder)).config.std_scale == pytest.approx(scale)
    assert "synthetic_psnr_gain_db" in (folder / CARD_FILE).read_text()

    # the accessor reads the folder as is
    pytest.importorskip("xr_opensr.accessor")
    cube = cube_factory(12, 10)
    result = cube.opensr.superresolve(model=str(folder), samples=2, steps=2).compute()
    assert result["sr"].shape[-2:] == (48, 40) and np.isfinite(result["sr"].values).all()
    assert np.isfinite(result["uncertainty"].values).all()


def test_training_data_module_shapes():
    data = pytest.importorskip("training.data")
    del data
    cfg = TrainConfig.from_json(TINY)
    dataset = loop.training_dataset(cfg)
    hr, lr = loop.PairSampler(dataset, seed=0).batch(0, 2)
    assert hr.shape == (2, 4, cfg.hr_patch, cfg.hr_patch) and lr.shape == (2, 4, cfg.model.patch_size,
                                                                            cfg.model.patch_size)
    assert torch.isfinite(hr).all() and 0 <= float(hr.mean()) < 1
    assert F.avg_pool2d(hr, 4).shape == lr.shape
