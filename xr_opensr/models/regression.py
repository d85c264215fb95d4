"""The mean network: a deterministic EDSR-like CNN that predicts the SR mean and a per-pixel spread.

Model v2 (``ModelConfig.mean_net``) takes its mean from this network and its uncertainty from the
network's spread head; ``training regression`` trains the same network as the deterministic baseline.
The network works at LR resolution (Lim et al. 2017, EDSR, without batch norm):

1. ``x = lr * input_gain + input_offset`` (the model's normalisation);
2. head: 3x3 conv, bands -> ``channels``;
3. ``blocks`` residual blocks ``h + res_scale * conv(relu(conv(h)))``, then a 3x3 conv, plus the
   head's output (global skip): the features ``f``;
4. mean: a 3x3 conv of ``f`` to ``bands * scale**2`` channels and PixelShuffle(``scale``), divided by
   ``input_gain`` and added to the bicubic upsampling of the LR (Keys a = -0.5,
   :func:`xr_opensr.sensor.bicubic_upsample`): the network learns the residual on bicubic;
5. spread (``uncertainty_channels`` > 0): ``uncertainty_depth`` 3x3 convs with ReLUs between
   (the last to ``bands * scale**2`` channels), PixelShuffle, softplus, on the *detached*
   features: the scale ``b`` of a Laplace distribution of the error ``hr - mean`` per HR pixel and
   band (trained with the Laplace negative log-likelihood ``|e| / b + log b``; everything the head
   sees is detached, so the spread never changes the mean). With ``uncertainty_detail`` the head
   also sees, per HR pixel brought to the LR grid by PixelUnshuffle, the detail the network added
   ``|mean - bicubic|`` and the bicubic image's gradient magnitude (central differences): where the
   network invents detail and where edges are, errors are large. Its standard deviation is
   ``sqrt(2) * b``; the model's ``std_scale`` calibrates it.

With 10 blocks of 32 channels and 4 bands the mean path has 214 k parameters, the default spread head
(32 channels, depth 2) 46 k.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["MeanNetConfig", "RegressionNet", "LAPLACE_STD"]

#: standard deviation of a Laplace distribution of scale 1
LAPLACE_STD = math.sqrt(2.0)

#: initial spread scale (reflectance): a typical error of a 4x SR mean
_INITIAL_SCALE = 0.01
#: factor on the detail and gradient inputs of the spread head (``uncertainty_detail``): their
#: typical values (0.005-0.05 reflectance) to order 1
_DETAIL_GAIN = 30.0


@dataclass(frozen=True)
class MeanNetConfig:
    """Architecture of :class:`RegressionNet` beyond the model's bands, scale and normalisation.

    Attributes
    ----------
    channels : feature channels at LR resolution.
    blocks : residual blocks.
    res_scale : factor of each block's residual branch.
    uncertainty_channels : hidden channels of the spread head (0: no head, no uncertainty).
    uncertainty_depth : 3x3 convolutions of the spread head (>= 2).
    uncertainty_detail : the spread head also sees the detail the network added and the bicubic
        gradient (module docstring, step 5).
    """

    channels: int = 32
    blocks: int = 10
    res_scale: float = 1.0
    uncertainty_channels: int = 32
    uncertainty_depth: int = 2
    uncertainty_detail: bool = False

    def __post_init__(self) -> None:
        from ..errors import ModelError

        if self.uncertainty_depth < 2:
            raise ModelError(f"mean_net.uncertainty_depth must be >= 2 (3x3 convolutions of the spread head), "
                             f"got {self.uncertainty_depth}")


class _ResBlock(nn.Module):
    def __init__(self, channels: int, res_scale: float) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.res_scale = res_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.res_scale * self.conv2(F.relu(self.conv1(x)))


class RegressionNet(nn.Module):
    """EDSR-like residual CNN on bicubic with a Laplace spread head (see the module docstring).

    Reflectance in, reflectance out; ``bands``, ``scale``, ``input_gain`` and ``input_offset`` are
    the model's (:class:`~xr_opensr.models.config.ModelConfig`).
    """

    def __init__(self, config: MeanNetConfig, bands: tuple[str, ...], scale: int,
                 input_gain: tuple[float, ...], input_offset: tuple[float, ...]) -> None:
        super().__init__()
        self.config, self.bands, self.scale = config, tuple(bands), int(scale)
        n, c, s = len(bands), config.channels, self.scale
        self.head = nn.Conv2d(n, c, 3, padding=1)
        self.body = nn.Sequential(*[_ResBlock(c, config.res_scale) for _ in range(config.blocks)])
        self.body_out = nn.Conv2d(c, c, 3, padding=1)
        self.up = nn.Conv2d(c, n * s * s, 3, padding=1)
        self.shuffle = nn.PixelShuffle(s)
        nn.init.zeros_(self.up.weight)  # starts as bicubic
        nn.init.zeros_(self.up.bias)
        self.spread = _spread_head(config, n, s) if config.uncertainty_channels else None
        self.register_buffer("gain", torch.tensor(input_gain, dtype=torch.float32).view(1, n, 1, 1))
        self.register_buffer("offset", torch.tensor(input_offset, dtype=torch.float32).view(1, n, 1, 1))

    @property
    def has_spread(self) -> bool:
        return self.spread is not None

    def features(self, lr: torch.Tensor) -> torch.Tensor:
        head = self.head(lr * self.gain + self.offset)
        return self.body_out(self.body(head)) + head

    def forward(self, lr: torch.Tensor, bicubic: torch.Tensor) -> torch.Tensor:
        """``lr`` (B, C, h, w) and its bicubic upsampling (B, C, s h, s w), reflectance -> mean (B, C, s h, s w)."""
        return self.mean_and_scale(lr, bicubic)[0]

    def mean_and_scale(self, lr: torch.Tensor, bicubic: torch.Tensor, *,
                       spread: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(mean, Laplace scale ``b`` or None without a spread head or with ``spread=False``), each
        (B, C, s h, s w)."""
        feat = self.features(lr)
        mean = bicubic + self.shuffle(self.up(feat)) / self.gain
        if self.spread is None or not spread:
            return mean, None
        head_in = feat.detach()
        if self.config.uncertainty_detail:
            detail = (mean.detach() - bicubic).abs()
            head_in = torch.cat([head_in, F.pixel_unshuffle(torch.cat([detail, _gradient(bicubic)], 1), self.scale)
                                 * _DETAIL_GAIN], 1)
        return mean, F.softplus(self.spread(head_in)) + 1e-5

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    @torch.inference_mode()
    def predict(self, lr: np.ndarray, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray | None]:
        """LR patches (N, C, h, w) float reflectance (finite) -> (mean, standard deviation ``sqrt(2) b``
        or None), each (N, C, s h, s w) float32. Each batch of ``batch_size`` items is one call."""
        from ..errors import InputError
        from ..sensor import bicubic_upsample

        lr = np.asarray(lr, dtype=np.float32)
        if lr.ndim != 4 or lr.shape[1] != len(self.bands):
            raise InputError(f"the mean network takes LR patches (N, {len(self.bands)}, h, w), got shape {lr.shape}")
        if not np.isfinite(lr).all():
            raise InputError("the mean network needs finite LR patches (no NaN/nodata): crop or fill them first")
        means, stds = [], []
        for a in range(0, lr.shape[0], batch_size):
            chunk = lr[a:a + batch_size]
            base = torch.from_numpy(np.asarray(bicubic_upsample(chunk, self.scale), dtype=np.float32))
            mean, b = self.mean_and_scale(torch.from_numpy(chunk).to(self.device), base.to(self.device))
            means.append(mean.float().cpu().numpy())
            if b is not None:
                stds.append((LAPLACE_STD * b).float().cpu().numpy())
        return np.concatenate(means), (np.concatenate(stds) if stds else None)


def _spread_head(config: MeanNetConfig, bands: int, scale: int) -> nn.Sequential:
    """The spread head (module docstring, step 5); its last convolution starts at zero weights, so
    the head starts as the constant scale ``_INITIAL_SCALE``."""
    u = config.uncertainty_channels
    c_in = config.channels + (2 * bands * scale * scale if config.uncertainty_detail else 0)
    layers: list[nn.Module] = []
    for i in range(config.uncertainty_depth - 1):
        layers += [nn.Conv2d(c_in if i == 0 else u, u, 3, padding=1), nn.ReLU()]
    last = nn.Conv2d(u, bands * scale * scale, 3, padding=1)
    nn.init.zeros_(last.weight)
    nn.init.constant_(last.bias, math.log(math.expm1(_INITIAL_SCALE)))
    return nn.Sequential(*layers, last, nn.PixelShuffle(scale))


def _gradient(img: torch.Tensor) -> torch.Tensor:
    """Per-band gradient magnitude of (B, C, H, W) by central differences (one-sided at the edges),
    as :func:`numpy.gradient`."""
    def diff(x: torch.Tensor, dim: int) -> torch.Tensor:
        n = x.shape[dim]
        inner = (x.narrow(dim, 2, n - 2) - x.narrow(dim, 0, n - 2)) / 2
        first = x.narrow(dim, 1, 1) - x.narrow(dim, 0, 1)
        last = x.narrow(dim, n - 1, 1) - x.narrow(dim, n - 2, 1)
        return torch.cat([first, inner, last], dim)

    return torch.hypot(diff(img, -2), diff(img, -1))


def laplace_nll(error: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood of ``error`` under Laplace(0, ``scale``), up to log 2."""
    return (error.abs() / scale + torch.log(scale)).mean()
