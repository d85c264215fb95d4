"""KL-regularised convolutional autoencoder (the "first stage" of the latent diffusion model).

The module tree follows the layout of the LDSR-S2 v1 checkpoint (``encoder.down.{level}.block.{i}``,
``encoder.mid.block_1`` ...), so its state dict loads without renaming. Every size comes from
:class:`AutoencoderConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["AutoencoderConfig", "AutoencoderKL", "DiagonalGaussian"]


@dataclass(frozen=True)
class AutoencoderConfig:
    """Architecture of the autoencoder.

    ``ch_mult`` has one entry per resolution level; the spatial downsampling factor is
    ``2 ** (len(ch_mult) - 1)``. ``attn_resolutions`` lists feature-map sizes (in pixels, relative
    to ``resolution``) at which self-attention follows each residual block.
    """

    in_channels: int = 4
    out_ch: int = 4
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 4)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = ()
    z_channels: int = 4
    embed_dim: int = 4
    double_z: bool = True
    resolution: int = 512
    dropout: float = 0.0
    num_groups: int = 32

    @property
    def downsampling(self) -> int:
        """Spatial factor between image and latent."""
        return 2 ** (len(self.ch_mult) - 1)


def _swish(x: torch.Tensor) -> torch.Tensor:
    """x * sigmoid(x), written out (equal to SiLU up to rounding; this form matches LDSR-S2 v1 bitwise)."""
    return x * torch.sigmoid(x)


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=min(groups, channels), num_channels=channels, eps=1e-6)


class ResnetBlock(nn.Module):
    """Two 3x3 convolutions with GroupNorm + SiLU and a (1x1-projected) skip connection."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float, groups: int) -> None:
        super().__init__()
        self.norm1 = _norm(in_channels, groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _norm(out_channels, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(_swish(self.norm1(x)))
        h = self.conv2(self.dropout(_swish(self.norm2(h))))
        skip = x if self.nin_shortcut is None else self.nin_shortcut(x)
        return skip + h


class SpatialSelfAttention(nn.Module):
    """Single-head self-attention over all pixels, with 1x1-conv projections."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.norm = _norm(channels, groups)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        n = self.norm(x)
        q = self.q(n).reshape(b, c, h * w).transpose(1, 2)  # (b, hw, c)
        k = self.k(n).reshape(b, c, h * w)  # (b, c, hw)
        v = self.v(n).reshape(b, c, h * w)
        weights = torch.softmax(torch.bmm(q, k) * c**-0.5, dim=2)  # (b, hw_q, hw_k)
        out = torch.bmm(v, weights.transpose(1, 2)).reshape(b, c, h, w)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Stride-2 3x3 convolution after padding one pixel at the right and bottom."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour 2x upsampling followed by a 3x3 convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Level(nn.Module):
    """One resolution level: residual blocks, optional attention, optional resampling."""

    def __init__(self) -> None:
        super().__init__()
        self.block = nn.ModuleList()
        self.attn = nn.ModuleList()


class _Middle(nn.Module):
    def __init__(self, channels: int, dropout: float, groups: int) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, dropout, groups)
        self.attn_1 = SpatialSelfAttention(channels, groups)
        self.block_2 = ResnetBlock(channels, channels, dropout, groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


def _run_level(level: _Level, h: torch.Tensor) -> torch.Tensor:
    for i, block in enumerate(level.block):
        h = block(h)
        if len(level.attn) > 0:
            h = level.attn[i](h)
    return h


class Encoder(nn.Module):
    """Image (B, in_channels, H, W) -> moments (B, 2*z_channels or z_channels, H/f, W/f)."""

    def __init__(self, cfg: AutoencoderConfig) -> None:
        super().__init__()
        g = cfg.num_groups
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, padding=1)
        self.down = nn.ModuleList()
        res = cfg.resolution
        ch_in = cfg.ch
        n_levels = len(cfg.ch_mult)
        for i_level, mult in enumerate(cfg.ch_mult):
            level = _Level()
            ch_out = cfg.ch * mult
            for _ in range(cfg.num_res_blocks):
                level.block.append(ResnetBlock(ch_in, ch_out, cfg.dropout, g))
                ch_in = ch_out
                if res in cfg.attn_resolutions:
                    level.attn.append(SpatialSelfAttention(ch_in, g))
            if i_level != n_levels - 1:
                level.downsample = Downsample(ch_in)
                res //= 2
            self.down.append(level)
        self.mid = _Middle(ch_in, cfg.dropout, g)
        self.norm_out = _norm(ch_in, g)
        self.conv_out = nn.Conv2d(ch_in, 2 * cfg.z_channels if cfg.double_z else cfg.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = _run_level(level, h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid(h)
        return self.conv_out(_swish(self.norm_out(h)))


class Decoder(nn.Module):
    """Latent (B, z_channels, h, w) -> image (B, out_ch, h*f, w*f)."""

    def __init__(self, cfg: AutoencoderConfig) -> None:
        super().__init__()
        g = cfg.num_groups
        n_levels = len(cfg.ch_mult)
        ch_in = cfg.ch * cfg.ch_mult[-1]
        res = cfg.resolution // 2 ** (n_levels - 1)
        self.conv_in = nn.Conv2d(cfg.z_channels, ch_in, 3, padding=1)
        self.mid = _Middle(ch_in, cfg.dropout, g)
        levels: list[_Level] = []
        for i_level in reversed(range(n_levels)):
            level = _Level()
            ch_out = cfg.ch * cfg.ch_mult[i_level]
            for _ in range(cfg.num_res_blocks + 1):
                level.block.append(ResnetBlock(ch_in, ch_out, cfg.dropout, g))
                ch_in = ch_out
                if res in cfg.attn_resolutions:
                    level.attn.append(SpatialSelfAttention(ch_in, g))
            if i_level != 0:
                level.upsample = Upsample(ch_in)
                res *= 2
            levels.insert(0, level)
        self.up = nn.ModuleList(levels)  # indexed by level, finest first (checkpoint layout)
        self.norm_out = _norm(ch_in, g)
        self.conv_out = nn.Conv2d(ch_in, cfg.out_ch, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = _run_level(level, h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(_swish(self.norm_out(h)))


class DiagonalGaussian:
    """Posterior N(mean, exp(logvar)) of the encoder; ``logvar`` is clamped to [-30, 20]."""

    def __init__(self, moments: torch.Tensor) -> None:
        self.mean, logvar = torch.chunk(moments, 2, dim=1)
        self.logvar = torch.clamp(logvar, -30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        # drawn where the generator lives (a CPU generator gives the same noise on every device)
        where = generator.device if generator is not None else self.mean.device
        noise = torch.randn(self.mean.shape, generator=generator, device=where, dtype=self.mean.dtype)
        return self.mean + self.std * noise.to(self.mean.device)

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL divergence to N(0, 1), summed over (C, H, W): shape (B,)."""
        var = torch.exp(self.logvar)
        return 0.5 * torch.sum(self.mean**2 + var - 1.0 - self.logvar, dim=(1, 2, 3))


class AutoencoderKL(nn.Module):
    """Encoder + ``quant_conv`` -> diagonal Gaussian latent -> ``post_quant_conv`` + decoder."""

    def __init__(self, cfg: AutoencoderConfig) -> None:
        super().__init__()
        if not cfg.double_z:
            raise ValueError("AutoencoderKL needs double_z=True (the encoder emits mean and logvar)")
        self.config = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quant_conv = nn.Conv2d(2 * cfg.z_channels, 2 * cfg.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, cfg.z_channels, 1)

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        """Image (B, C, H, W) -> posterior over latents (B, embed_dim, H/f, W/f)."""
        return DiagonalGaussian(self.quant_conv(self.encoder(x)))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latent (B, embed_dim, h, w) -> image (B, out_ch, h*f, w*f)."""
        return self.decoder(self.post_quant_conv(z))

    def forward(
        self, x: torch.Tensor, sample_posterior: bool = True, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, DiagonalGaussian]:
        posterior = self.encode(x)
        z = posterior.sample(generator) if sample_posterior else posterior.mode()
        return self.decode(z), posterior
