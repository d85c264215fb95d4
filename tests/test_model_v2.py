"""Model v2: a mean network gives the mean and the uncertainty, the diffusion model the samples' detail."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from xr_opensr.errors import CheckpointError, InputError  # noqa: E402
from xr_opensr.models import load_model, save_model  # noqa: E402
from xr_opensr.models.io import MEAN_NET_FILE, WEIGHTS_FILE, seeded_model, tiny_config  # noqa: E402
from xr_opensr.models.regression import MeanNetConfig  # noqa: E402


@pytest.fixture(scope="module")
def v2():
    cfg = tiny_config(mean_net=MeanNetConfig(channels=8, blocks=2, uncertainty_channels=8))
    net = seeded_model(cfg, 0)
    with torch.no_grad():  # a spread head that varies over the image (its last layer starts at zero)
        net.mean_net.spread[2].weight.normal_(0.0, 0.05)
        net.mean_net.up.weight.normal_(0.0, 0.01)
    return net


@pytest.fixture(scope="module")
def lr(v2):
    rng = np.random.default_rng(0)
    p = v2.config.patch_size
    out = rng.uniform(0.02, 0.3, (3, 4, p, p)).astype(np.float32)
    out[1, :, :3, :3] = np.nan
    return out


@pytest.mark.parametrize("samples", [2, 4, 7])
def test_samples_have_the_mean_and_std_exactly(v2, lr, samples):
    out = v2.sample_summary(lr, samples=samples, seed=[1, 2, 3], steps=2, return_samples=True)
    mean, std = v2.summarize(out[:, 2:])
    np.testing.assert_allclose(mean, out[:, 0], atol=1e-6, equal_nan=True)
    np.testing.assert_allclose(std, out[:, 1], atol=1e-6, equal_nan=True)
    assert np.nanmin(out[:, 1]) > 0
    # the samples differ from one another (detail from the diffusion model), not only by a constant
    assert np.nanstd(out[:, 2] - out[:, 3]) > 0


def test_mean_and_std_do_not_depend_on_the_sample_count(v2, lr):
    s2 = v2.sample_summary(lr, samples=2, steps=2)
    s10 = v2.sample_summary(lr, samples=10, steps=2)
    np.testing.assert_array_equal(s2, s10)
    s0 = v2.sample_summary(lr, samples=0)
    np.testing.assert_array_equal(s0[:, 0], s2[:, 0])
    assert np.isnan(s0[:, 1]).all()  # the fast path computes no uncertainty
    s1 = v2.sample_summary(lr, samples=1, steps=2)
    np.testing.assert_array_equal(s1[:, 0], s2[:, 0])
    assert np.nanmax(np.abs(s1[:, 1])) == 0  # one sample: zero spread


def test_nodata_and_batch_invariance(v2, lr):
    out = v2.sample_summary(lr, samples=3, seed=[1, 2, 3], steps=2, return_samples=True)
    s = v2.config.scale
    assert np.isnan(out[1, :, :, : 3 * s, : 3 * s]).all()
    assert np.isfinite(out[0]).all()
    alone = v2.sample_summary(lr[2:3], samples=3, seed=[3], steps=2, return_samples=True)
    np.testing.assert_array_equal(alone[0], out[2])


def test_mean_is_the_mean_network_plus_consistency(v2, lr):
    from xr_opensr.sensor import bicubic_upsample

    x = lr[[0, 2]]
    with torch.no_grad():
        direct = v2.mean_net(torch.from_numpy(x), torch.from_numpy(bicubic_upsample(x, 4).astype(np.float32)))
    mean = v2.sample_summary(x, samples=0)[:, 0]
    np.testing.assert_allclose(mean, np.maximum(direct.numpy(), 0), atol=1e-5)


def test_std_scale_scales_the_uncertainty(v2, lr):
    other = seeded_model(v2.config.replace(std_scale=2.5), 0)
    other.load_state_dict(v2.state_dict())
    a, b = v2.sample_summary(lr, samples=4, steps=2), other.sample_summary(lr, samples=4, steps=2)
    np.testing.assert_allclose(b[:, 1], 2.5 * a[:, 1], rtol=1e-5, equal_nan=True)
    np.testing.assert_array_equal(a[:, 0], b[:, 0])


def test_v1_refuses_samples_zero():
    net = seeded_model(tiny_config(), 0)
    with pytest.raises(InputError, match="mean network"):
        net.sample_summary(np.full((1, 4, 16, 16), 0.1, np.float32), samples=0)


def test_save_and_load_keep_the_diffusion_file_apart(v2, lr, tmp_path):
    folder = save_model(v2, tmp_path / "m")
    assert (folder / MEAN_NET_FILE).is_file()
    from safetensors import safe_open

    with safe_open(str(folder / WEIGHTS_FILE), framework="pt") as fh:
        assert not any(k.startswith("mean_net.") for k in fh.keys())  # noqa: SIM118
    again = load_model(folder, device="cpu")
    np.testing.assert_array_equal(again.sample_summary(lr, samples=2, steps=2), v2.sample_summary(lr, samples=2, steps=2))
    assert json.loads((folder / "config.json").read_text())["kind"] == "ldm+mean"
    (folder / MEAN_NET_FILE).unlink()
    with pytest.raises(CheckpointError, match=MEAN_NET_FILE):
        load_model(folder, device="cpu")


def test_v2_is_a_composition_behind_the_model_interface(v2, lr):
    """A mean network and a diffusion model (an SRModel of the same config without the mean network);
    ``info`` says samples=0 gives the mean; ``run`` is ``sample_summary`` with the options."""
    from xr_opensr.models import SRModel
    from xr_opensr.models.base import Model, SampleOptions
    from xr_opensr.models.v2 import MeanSpreadModel

    assert isinstance(v2, MeanSpreadModel) and isinstance(v2, Model) and type(v2.diffusion) is SRModel
    assert v2.diffusion.config.kind == "ldm" and v2.diffusion.config.mean_net is None and v2.config.kind == "ldm+mean"
    assert v2.info.mean_without_samples and not v2.diffusion.info.mean_without_samples and not v2.info.trained
    assert v2.info.sampling == v2.diffusion.info.sampling and v2.device == v2.diffusion.device
    from xr_opensr.errors import ConfigError

    with pytest.raises(ConfigError, match="has a mean_net: build it with xr_opensr.models.v2.MeanSpreadModel"):
        SRModel(v2.config)  # the diffusion model alone never carries a mean network
    opts = SampleOptions(samples=3, steps=2, return_samples=True)
    np.testing.assert_array_equal(v2.run(lr, np.array([1, 2, 3], dtype=np.uint64), opts),
                                  v2.sample_summary(lr, samples=3, steps=2, seed=[1, 2, 3], return_samples=True))


def test_config_rejects_bad_mean_net():
    from xr_opensr.errors import ConfigError

    cfg = tiny_config().to_dict()
    cfg["mean_net"] = {"channels": 8, "blocks": 2, "res_scale": 1.0, "uncertainty_channels": 8, "width": 3}
    from xr_opensr.models import ModelConfig

    with pytest.raises(ConfigError, match="width"):
        ModelConfig.from_dict(cfg)


def test_mean_net_config_of_0_2_0_loads_and_deeper_heads_round_trip(lr, tmp_path):
    """A 0.2.0 config (no head depth, no detail inputs) loads as the depth-2 head; a depth-3 head with
    the detail inputs saves, loads and gives the same uncertainty; depth 1 is refused."""
    from xr_opensr.errors import ConfigError
    from xr_opensr.models import ModelConfig

    cfg = tiny_config(mean_net=MeanNetConfig(channels=8, blocks=2, uncertainty_channels=8)).to_dict()
    for key in ("uncertainty_depth", "uncertainty_detail"):
        del cfg["mean_net"][key]
    assert ModelConfig.from_dict(cfg).mean_net == MeanNetConfig(channels=8, blocks=2, uncertainty_channels=8,
                                                                 uncertainty_depth=2, uncertainty_detail=False)
    deep = seeded_model(tiny_config(mean_net=MeanNetConfig(channels=8, blocks=2, uncertainty_channels=8,
                                                           uncertainty_depth=3, uncertainty_detail=True)), 0)
    with torch.no_grad():
        deep.mean_net.spread[4].weight.normal_(0.0, 0.05)
        deep.mean_net.up.weight.normal_(0.0, 0.01)
    out = deep.sample_summary(lr, samples=0)
    again = load_model(save_model(deep, tmp_path / "deep"), device="cpu")
    np.testing.assert_array_equal(again.sample_summary(lr, samples=2, steps=2), deep.sample_summary(lr, samples=2, steps=2))
    assert np.isfinite(out[:, 0][~np.isnan(out[:, 0])]).all()
    cfg["mean_net"]["uncertainty_depth"] = 1
    with pytest.raises(ConfigError, match="uncertainty_depth"):
        ModelConfig.from_dict(cfg)


def test_samples_zero_through_the_accessor_and_the_cli(tmp_path):
    """The fast deterministic path: the default model's mean, chunk-invariant, no uncertainty; a model
    without a mean network refuses it with the fix in the message."""
    import xarray as xr
    from conftest import make_cube

    import xr_opensr  # noqa: F401
    from xr_opensr.cli import main

    cube = make_cube(40, 36)
    fast = cube.opensr.superresolve(0).compute()
    sampled = cube.opensr.superresolve(4).compute()
    np.testing.assert_array_equal(fast.sr.values, sampled.sr.values)  # v2: the same mean
    assert np.isnan(fast.uncertainty.values).all() and np.isfinite(sampled.uncertainty.values).all()
    xr.testing.assert_identical(fast, cube.chunk({"x": 12, "y": 12}).opensr.superresolve(0).compute())
    with pytest.raises(InputError, match="mean network"):
        cube.opensr.superresolve(0, model="tiny").compute()
    with pytest.raises(InputError, match="integer >= 0"):
        cube.opensr.superresolve(-1)
    src = tmp_path / "in.tif"
    cube.rio.to_raster(src)
    assert main(["superresolve", str(src), str(tmp_path / "out.tif"), "--samples", "0"]) == 0


def test_samples_zero_with_the_20m_bands():
    import xr_opensr  # noqa: F401
    from xr_opensr.sentinel2 import SR_BANDS
    from xr_opensr.testing import s2_cube

    cube = s2_cube(48, 48, bands=SR_BANDS)
    fast, sampled = (cube.opensr.superresolve(n, bands="all").compute() for n in (0, 4))
    np.testing.assert_array_equal(fast.sr.values, sampled.sr.values)
    assert np.isnan(fast.uncertainty.values).all() and np.isfinite(sampled.uncertainty.values).all()


def test_a_renamed_tensor_names_the_file_that_holds_it(v2, tmp_path):
    """A tensor renamed in mean_net.safetensors: the error names that file (it named model.safetensors)."""
    from safetensors.torch import load_file, save_file

    folder = save_model(v2, tmp_path / "m")
    state = load_file(str(folder / MEAN_NET_FILE))
    state["head.weight_renamed"] = state.pop("head.weight")
    save_file(state, str(folder / MEAN_NET_FILE))
    with pytest.raises(CheckpointError) as info:
        load_model(folder, device="cpu")
    text = str(info.value)
    assert f"weights {folder / MEAN_NET_FILE} do not fit the config of model 'tiny'" in text
    assert "1 missing keys: head.weight;" in text and "1 unexpected keys: head.weight_renamed" in text
    assert str(folder / WEIGHTS_FILE) not in text


def test_crop_tiling_gives_the_whole_image_run_chunk_invariantly(monkeypatch):
    """issue 22: ``tiling="crop"``: the default (a mean network and spread head that declare their receptive
    field) runs on tiles of CROP_TILE plus the halo, cropped to the centre: the whole-image mean and
    uncertainty (to float rounding: convolutions of another image size), whatever the chunks; no seams."""
    import xarray as xr
    from conftest import make_cube

    from xr_opensr import core
    from xr_opensr.models.base import SampleOptions
    from xr_opensr.models.registry import load

    monkeypatch.setattr(core, "CROP_TILE", 64)  # small tiles: a 128 x 120 cube holds 2 x 2 of them
    cube = make_cube(128, 120, dtype="float32")
    res = cube.opensr.superresolve(2, tiling="crop").compute()
    assert res.attrs["tiling"] == "crop" and res.attrs["patch"] >= 64 + res.attrs["overlap"]
    model = load("default", device="cpu")
    whole = model.run(cube.values[None].astype(np.float32), np.zeros(1, np.uint64), SampleOptions(samples=2))[0]
    h = 4 * model.info.halo  # the image's own edge: the last tile is padded past it (not the whole-image padding)
    np.testing.assert_allclose(res.sr.values[:, :-h, :-h], whole[0][:, :-h, :-h], rtol=0, atol=2e-6)
    np.testing.assert_allclose(res.uncertainty.values[:, :-h, :-h], whole[1][:, :-h, :-h], rtol=0, atol=2e-6)
    again = cube.chunk({"x": 40, "y": 56}).opensr.superresolve(2, tiling="crop").compute()
    xr.testing.assert_identical(res, again)
    # with the samples: sr and uncertainty the cropped ones, the samples (blended on the model's grid) moved to them
    small = cube.isel(x=slice(0, 72), y=slice(0, 80))
    plain = small.opensr.superresolve(2, tiling="crop").compute()
    both = small.opensr.superresolve(2, tiling="crop", return_samples=True, steps=1).compute()
    np.testing.assert_array_equal(both.sr.values, plain.sr.values)
    np.testing.assert_array_equal(both.uncertainty.values, plain.uncertainty.values)
    assert both.attrs["samples_patch"] == 32 and both.attrs["samples_overlap"] == 8
    np.testing.assert_allclose(both.samples.mean("sample").values, both.sr.values, rtol=0, atol=1e-5)
    with pytest.raises(InputError, match="tiling='crop' with the 20 m bands"):
        make_cube(16, 16, bands=("B04", "B03", "B02", "B08", "B11")).opensr.superresolve(2, bands="all", tiling="crop")
    with pytest.raises(InputError, match="leave patch and overlap None"):
        cube.opensr.superresolve(2, tiling="crop", patch=64)
    with pytest.raises(InputError, match="'tiny' does not: use tiling='blend'"):
        cube.opensr.superresolve(2, model="tiny", tiling="crop")
