"""Numerical parity with the published LDSR-S2 v1 code (the `opensr-model` package) as oracle.

The reference network is built from the v1 config with seeded random weights, saved as a
Lightning-style ``.ckpt`` and loaded into our engine through the real conversion path.
Run with ``pytest -k parity``. These tests never skip: opensr-model is a test dependency.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xr_opensr.errors import CheckpointError
from xr_opensr.models import load_model, match_histograms
from xr_opensr.models.diffusion import DDIMSampler
from xr_opensr.models.io import ldsr_s2_v1_config
from xr_opensr.models.pipeline import item_generator

pytestmark = pytest.mark.parity

V1 = ldsr_s2_v1_config()


def _reference_config():
    from omegaconf import OmegaConf

    ae, un, sch, smp = V1.autoencoder, V1.denoiser, V1.schedule, V1.sampler
    return OmegaConf.create(
        {
            "apply_normalization": False,
            "encode_conditioning": True,
            "denoiser_settings": {
                "linear_start": sch.linear_start,
                "linear_end": sch.linear_end,
                "timesteps": sch.timesteps,
                "parameterization": "eps",
                "sampling_eta": smp.eta,
                "sampling_temperature": smp.temperature,
                "sampling_steps": smp.steps,
            },
            "first_stage_config": {
                "embed_dim": ae.embed_dim, "double_z": ae.double_z, "z_channels": ae.z_channels,
                "resolution": ae.resolution, "in_channels": ae.in_channels, "out_ch": ae.out_ch,
                "ch": ae.ch, "ch_mult": list(ae.ch_mult), "num_res_blocks": ae.num_res_blocks,
                "attn_resolutions": list(ae.attn_resolutions), "dropout": ae.dropout,
            },
            "cond_stage_config": {
                "image_size": un.image_size, "in_channels": un.in_channels,
                "model_channels": un.model_channels, "out_channels": un.out_channels,
                "num_res_blocks": un.num_res_blocks, "attention_resolutions": list(un.attention_resolutions),
                "channel_mult": list(un.channel_mult), "num_head_channels": un.num_head_channels,
            },
            "other": {
                "concat_mode": True, "cond_stage_trainable": False,
                "first_stage_key": "image", "cond_stage_key": "LR_image",
            },
        }
    )


@pytest.fixture(scope="module")
def reference():
    """opensr-model's SRLatentDiffusion with seeded random weights (zero-initialised layers filled)."""
    import opensr_model

    torch.manual_seed(0)
    ref = opensr_model.SRLatentDiffusion(_reference_config(), device="cpu")
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in ref.model.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    return ref.eval()


@pytest.fixture(scope="module")
def ckpt_path(reference, tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "opensr-ldsrs2_v1_0_0.ckpt"
    torch.save({"state_dict": reference.model.state_dict(), "epoch": 3}, path)
    return path


@pytest.fixture(scope="module")
def ours(ckpt_path):
    return load_model(ckpt_path, device="cpu")


def _maxdiff(a: torch.Tensor, b: torch.Tensor, label: str = "") -> float:
    diff = float((a.double() - b.double()).abs().max())
    if label:  # the margins, shown with `pytest -k parity -s`
        print(f"\nparity margin {label}: max abs diff {diff:.3e}")
    return diff


def test_parity_checkpoint_layout(reference, ours):
    sd = reference.model.state_dict()
    assert len(sd) == 830
    assert sum(p.numel() for p in ours.parameters()) == 168_955_116
    assert ours.config.schedule.linear_end == pytest.approx(V1.schedule.linear_end)


@torch.no_grad()
def test_parity_autoencoder_encode_decode(reference, ours):
    x = torch.rand(1, 4, 128, 128, generator=torch.Generator().manual_seed(2)) * 0.4
    ref_post = reference.model.first_stage_model.encode(x)
    our_post = ours.autoencoder.encode(x)
    assert _maxdiff(ref_post.mean, our_post.mean, "AE encode mean") <= 1e-5
    assert _maxdiff(ref_post.logvar, our_post.logvar, "AE encode logvar") <= 1e-5
    z = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(3))
    assert _maxdiff(reference.model.decode_first_stage(z), ours.autoencoder.decode(z), "AE decode") <= 1e-5


@torch.no_grad()
@pytest.mark.parametrize("t", [1, 500, 991])
def test_parity_unet(reference, ours, t):
    gen = torch.Generator().manual_seed(t)
    x = torch.randn(2, 4, 32, 32, generator=gen)
    cond = torch.randn(2, 4, 32, 32, generator=gen)
    tt = torch.full((2,), t, dtype=torch.long)
    ref_eps = reference.model.apply_model(x, tt, cond)
    our_eps = ours.denoise(x, tt, cond)
    assert float(ref_eps.abs().mean()) > 1e-3  # a real signal, not zeros
    assert _maxdiff(ref_eps, our_eps, f"UNet t={t}") <= 1e-5


@torch.no_grad()
def test_parity_ddim_step(reference, ours):
    from opensr_model.diffusion.utils import DDIMSampler as RefDDIM

    steps, eta = 100, V1.sampler.eta
    ref_ddim = RefDDIM(reference.model)
    ref_ddim.make_schedule(ddim_num_steps=steps, ddim_eta=eta, verbose=False)
    our_ddim = DDIMSampler(ours.schedule, steps, eta)
    np.testing.assert_array_equal(ref_ddim.ddim_timesteps, our_ddim.timesteps)

    gen = torch.Generator().manual_seed(4)
    x = torch.randn(1, 4, 32, 32, generator=gen)
    cond = torch.randn(1, 4, 32, 32, generator=gen)
    index = 60
    t = int(our_ddim.timesteps[index])
    torch.manual_seed(123)
    ref_prev, ref_x0 = ref_ddim.p_sample_ddim(x=x, c=cond, t=t, index=index)
    torch.manual_seed(123)
    noise = torch.randn(x.shape)
    eps = ours.denoise(x, torch.full((1,), t, dtype=torch.long), cond)
    our_prev, our_x0 = our_ddim.step(x, eps, index, noise)
    assert _maxdiff(ref_x0, our_x0, "DDIM step pred_x0") <= 1e-5
    assert _maxdiff(ref_prev, our_prev, "DDIM step x_prev") <= 1e-5


@torch.no_grad()
def test_parity_end_to_end_two_steps(reference, ours):
    """Published encode -> DDIM (eta 0) -> decode vs ``SRModel.sample`` with the same noise."""
    from opensr_model.diffusion.utils import DDIMSampler as RefDDIM

    steps, seed = 2, 7
    lr = torch.rand(1, 4, 32, 32, generator=torch.Generator().manual_seed(5)) * 0.3
    # the reference draws the conditioning posterior sample, then the initial latent, from the
    # global RNG; our item generator draws the same two tensors in the same order
    torch.manual_seed(item_generator(seed, 0).initial_seed())
    cond = reference._tensor_encode(lr)
    ddim = RefDDIM(reference.model)
    ddim.make_schedule(ddim_num_steps=steps, ddim_eta=0.0, verbose=False)
    latent = torch.randn(cond.shape)
    for i, t in enumerate(np.flip(ddim.ddim_timesteps)):
        latent, _ = ddim.p_sample_ddim(x=latent, c=cond, t=int(t), index=steps - i - 1)
    ref_sr = reference._tensor_decode(latent, spe_cor=False)

    small = ours.config.replace(patch_size=32, default_overlap=8)  # the model's minimum size: no padding here
    ours.config, saved = small, ours.config
    try:
        out = ours.sample(lr, samples=1, steps=steps, eta=0.0, seed=seed, histogram_matching=False)
    finally:
        ours.config = saved
    assert out.shape == (1, 1, 4, 128, 128)
    assert _maxdiff(ref_sr, out[:, 0], "2-step eta=0 end to end") <= 1e-4


def test_parity_histogram_matching_matches_skimage():
    from skimage.exposure import match_histograms as sk_match

    rng = np.random.default_rng(0)
    src = rng.gamma(2.0, 0.05, size=(64, 64)).astype(np.float32)
    ref = rng.gamma(3.0, 0.03, size=(16, 16)).astype(np.float32)
    np.testing.assert_allclose(match_histograms(src, ref), sk_match(src, ref), atol=1e-6)


def test_parity_ema_weights_selectable(reference, ckpt_path):
    ema = load_model(ckpt_path, device="cpu", ema=True)
    ema_buffers = dict(reference.model.model_ema.named_buffers())
    for name, param in ema.denoiser.named_parameters():
        assert torch.equal(param, ema_buffers["diffusion_model" + name.replace(".", "")]), name
    # the EMA copy was taken before the zero-initialised layers were filled: it differs from raw
    w = ema.denoiser.input_blocks[1][0].out_layers[3].weight
    raw = reference.model.model.diffusion_model.input_blocks[1][0].out_layers[3].weight
    assert not torch.equal(w, raw)


@torch.no_grad()
def test_parity_breaks_when_a_weight_is_permuted(reference, ckpt_path, tmp_path):
    """The parity checks can fail: swap two output channels of one conv and compare again."""
    state = dict(reference.model.state_dict())
    key = "model.diffusion_model.input_blocks.1.0.in_layers.2.weight"
    state[key] = state[key][torch.roll(torch.arange(state[key].shape[0]), 1)]
    bad = tmp_path / "permuted.ckpt"
    torch.save({"state_dict": state}, bad)
    broken = load_model(bad, device="cpu")
    gen = torch.Generator().manual_seed(9)
    x, cond = torch.randn(1, 4, 32, 32, generator=gen), torch.randn(1, 4, 32, 32, generator=gen)
    t = torch.full((1,), 500, dtype=torch.long)
    assert _maxdiff(reference.model.apply_model(x, t, cond), broken.denoise(x, t, cond)) > 1e-3


class _RunsCode:
    """Pickles to a call that would create a file if the loader ever ran pickled code."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_parity_unsafe_checkpoint_is_refused(reference, tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "unsafe.ckpt"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "hyper_parameters": _RunsCode(str(marker))}, path)
    with pytest.raises(CheckpointError, match="arbitrary pickled code"):
        load_model(path, device="cpu")
    assert not marker.exists()


def test_parity_cli_convert_writes_a_loadable_folder(reference, ckpt_path, tmp_path):
    from xr_opensr.cli import main

    out = tmp_path / "ldsr"
    assert main(["convert", str(ckpt_path), str(out)]) == 0
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    net = load_model(out, device="cpu")
    gen = torch.Generator().manual_seed(11)
    x, cond = torch.randn(1, 4, 32, 32, generator=gen), torch.randn(1, 4, 32, 32, generator=gen)
    t = torch.full((1,), 250, dtype=torch.long)
    with torch.no_grad():
        assert _maxdiff(reference.model.apply_model(x, t, cond), net.denoise(x, t, cond)) <= 1e-5
    # an existing output is never overwritten without --overwrite
    assert main(["convert", str(ckpt_path), str(out)]) == 2
