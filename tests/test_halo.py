"""models.halo.receptive_halo: the receptive field of small conv nets of known halo, measured."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from xr_opensr.models.halo import receptive_halo

SCALE = 4


def lr_convs(n: int, channels: int = 3, width: int = 8, kernel: int = 3) -> list[nn.Module]:
    """``n`` 'same' convolutions in LR (halo ``n * (kernel // 2)``), the last to ``channels * 16``."""
    layers: list[nn.Module] = []
    for k in range(n):
        last = k == n - 1
        layers += [nn.Conv2d(channels if k == 0 else width, channels * SCALE**2 if last else width, kernel,
                             padding=kernel // 2)]
        if not last:
            layers.append(nn.ReLU())
    return layers


def net(*layers: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(*layers)


def test_three_convs_then_pixel_shuffle():
    """Three 3x3 convolutions in LR, then PixelShuffle: halo 3, measured 3 (+ 1 for safety)."""
    model = net(*lr_convs(3), nn.PixelShuffle(SCALE))
    assert receptive_halo(model, SCALE) == 3 + 1
    assert receptive_halo(model, SCALE, probe=16) == 3 + 1  # any probe large enough


@pytest.mark.parametrize(("n", "kernel", "halo"), [(1, 3, 1), (2, 5, 4), (4, 3, 4)])
def test_lr_fields(n, kernel, halo):
    assert receptive_halo(net(*lr_convs(n, kernel=kernel), nn.PixelShuffle(SCALE)), SCALE) == halo + 1


def test_an_hr_convolution_adds_its_share():
    """Two LR 3x3 convs (2 LR px), shuffle, then one 3x3 conv in HR: 1 HR pixel reaches into the
    next LR pixel, so the halo is 3 LR px (rounded up)."""
    model = net(*lr_convs(2), nn.PixelShuffle(SCALE), nn.Conv2d(3, 3, 3, padding=1))
    assert receptive_halo(model, SCALE) == 3 + 1


def test_outputs_of_a_mean_and_spread_and_a_plain_callable():
    """A tuple of HR outputs (a mean and a spread head: the union of their fields); any callable."""

    class MeanSpread(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mean = nn.Sequential(*lr_convs(2), nn.PixelShuffle(SCALE))
            self.spread = nn.Sequential(*lr_convs(4), nn.PixelShuffle(SCALE))

        def forward(self, x):
            return self.mean(x), self.spread(x)

    torch.manual_seed(0)
    model = MeanSpread()
    assert receptive_halo(model, SCALE) == 4 + 1
    assert receptive_halo(lambda x: model.mean.double()(x), SCALE, channels=3) == 2 + 1


def test_the_module_is_left_as_it_is():
    model = net(*lr_convs(2), nn.Dropout(0.5), nn.PixelShuffle(SCALE))  # dropout: measured in eval mode
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert receptive_halo(model, SCALE) == 2 + 1
    assert model.training and all(v.dtype == torch.float32 for v in model.state_dict().values())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_non_local_networks_are_refused():
    """GroupNorm over the whole image: one pixel changes every output, the field reaches the border."""
    model = net(nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.Conv2d(8, 48, 1), nn.PixelShuffle(SCALE))
    with pytest.raises(ValueError, match="halo=None"):
        receptive_halo(model, SCALE, probe=16)
    with pytest.raises(ValueError, match="probe=32"):  # a local field larger than the probe
        receptive_halo(net(*lr_convs(8), nn.PixelShuffle(SCALE)), SCALE, probe=16)


def test_bad_calls():
    with pytest.raises(TypeError, match="channels=C"):
        receptive_halo(lambda x: x, SCALE)
    with pytest.raises(ValueError, match=r"no HR tensor .*scale"):
        receptive_halo(net(*lr_convs(1), nn.PixelShuffle(SCALE)), 2)
    with pytest.raises(ValueError, match="does not change"):
        receptive_halo(lambda x: torch.zeros(1, 3, 4 * x.shape[-2], 4 * x.shape[-1]), SCALE, channels=3)
    with pytest.raises(ValueError, match="at least 8"):
        receptive_halo(net(*lr_convs(1), nn.PixelShuffle(SCALE)), SCALE, probe=4)


def test_import_needs_no_torch():
    code = "import sys, xr_opensr.models.halo; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("changes", [None, {"blocks": 2, "uncertainty_depth": 2, "uncertainty_detail": False},
                                     {"blocks": 1, "uncertainty_depth": 4, "uncertainty_detail": True}])
def test_model_v2_declares_a_halo_its_mean_and_spread_respect(changes):
    """``MeanSpreadModel.info.halo`` (from the config) is at least the measured receptive field of the
    mean (with the consistency step) and the spread: the shipped default, and seeded smaller ones."""
    import dataclasses

    import torch

    from xr_opensr.models.io import seeded_model
    from xr_opensr.models.registry import load

    if changes is None:
        model = load("default", device="cpu")
    else:
        base = load("default", device="cpu").config
        model = seeded_model(base.replace(mean_net=dataclasses.replace(base.mean_net, **changes)), 3)

    def path(x):
        mean, std = model.mean_and_spread(x.float(), torch.zeros(1, *x.shape[-2:], dtype=torch.bool))
        return torch.from_numpy(mean), torch.from_numpy(std)

    measured = receptive_halo(path, model.info.scale, probe=96, channels=4)
    assert measured <= model.info.halo <= measured + 2, (measured, model.info.halo)
