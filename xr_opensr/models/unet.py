"""Denoising UNet of the latent diffusion model (eps-prediction), in the LDSR-S2 v1 layout.

Input: the noisy latent concatenated with the encoded low-resolution image along channels,
(B, in_channels, h, w), and integer timesteps (B,). Output: the predicted noise (B, out_channels, h, w).
Module names (``time_embed.0``, ``input_blocks.N.M``, ``middle_block``, ``output_blocks``, ``out``)
match the published checkpoint so its state dict loads as is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["UNetConfig", "UNet", "timestep_embedding"]


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of the denoiser.

    ``attention_resolutions`` are downsampling factors (1, 2, 4, ...) of the latent at which
    attention follows each residual block; attention heads have ``num_head_channels`` channels.
    """

    in_channels: int = 8
    out_channels: int = 4
    model_channels: int = 160
    channel_mult: tuple[int, ...] = (1, 2, 2, 4)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (16, 8)
    num_head_channels: int = 32
    image_size: int = 128
    dropout: float = 0.0
    num_groups: int = 32


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (B,) timesteps -> (B, dim): cosines first, then sines."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    )
    args = timesteps[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 whatever the input dtype (stable under bf16/fp16)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # parameters too: the module itself may have been cast to bf16/fp16 with the rest of the UNet
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.group_norm(x.float(), self.num_groups, weight, bias, self.eps).type(x.dtype)


def _norm(channels: int, groups: int) -> GroupNorm32:
    return GroupNorm32(min(groups, channels), channels)


class ResBlock(nn.Module):
    """Residual block whose first activation is shifted by a projection of the time embedding."""

    def __init__(self, channels: int, emb_channels: int, out_channels: int, dropout: float, groups: int) -> None:
        super().__init__()
        self.in_layers = nn.Sequential(
            _norm(channels, groups), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1)
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        self.out_layers = nn.Sequential(
            _norm(out_channels, groups),
            nn.SiLU(),
            nn.Dropout(dropout),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
        )
        nn.init.zeros_(self.out_layers[3].weight)
        nn.init.zeros_(self.out_layers[3].bias)
        if out_channels == channels:
            self.skip_connection: nn.Module = nn.Identity()
        else:
            self.skip_connection = nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        h = h + self.emb_layers(emb).type(h.dtype)[:, :, None, None]
        return self.skip_connection(x) + self.out_layers(h)


class AttentionBlock(nn.Module):
    """Multi-head self-attention over pixels; heads of ``head_channels`` channels."""

    def __init__(self, channels: int, head_channels: int, groups: int) -> None:
        super().__init__()
        if channels % head_channels:
            raise ValueError(f"{channels} channels are not divisible by num_head_channels={head_channels}")
        self.num_heads = channels // head_channels
        self.norm = _norm(channels, groups)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        flat = x.reshape(b, c, h * w)
        qkv = self.qkv(self.norm(flat))
        # Layout of the qkv channels: per head, [q | k | v] each of c/heads channels.
        heads = self.num_heads
        ch = c // heads
        q, k, v = qkv.reshape(b * heads, 3 * ch, h * w).split(ch, dim=1)
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        )  # (b*heads, hw, ch), softmax(q k^T / sqrt(ch)) v
        out = out.transpose(1, 2).reshape(b, c, h * w)
        return (flat + self.proj_out(out)).reshape(b, c, h, w)


class Downsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class TimestepSequential(nn.Sequential):
    """A sequence of layers; residual blocks also receive the time embedding."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class UNet(nn.Module):
    """Eps-prediction UNet: (x_t ++ cond) (B, in_channels, h, w), t (B,) -> eps (B, out_channels, h, w).

    ``h`` and ``w`` must be divisible by ``2 ** (len(channel_mult) - 1)``.
    """

    def __init__(self, cfg: UNetConfig) -> None:
        super().__init__()
        self.config = cfg
        g = cfg.num_groups
        mc = cfg.model_channels
        emb_dim = 4 * mc
        self.time_embed = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

        self.input_blocks = nn.ModuleList([TimestepSequential(nn.Conv2d(cfg.in_channels, mc, 3, padding=1))])
        skip_channels = [mc]
        ch = mc
        factor = 1
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers: list[nn.Module] = [ResBlock(ch, emb_dim, mult * mc, cfg.dropout, g)]
                ch = mult * mc
                if factor in cfg.attention_resolutions:
                    layers.append(AttentionBlock(ch, cfg.num_head_channels, g))
                self.input_blocks.append(TimestepSequential(*layers))
                skip_channels.append(ch)
            if level != len(cfg.channel_mult) - 1:
                self.input_blocks.append(TimestepSequential(Downsample(ch)))
                skip_channels.append(ch)
                factor *= 2

        self.middle_block = TimestepSequential(
            ResBlock(ch, emb_dim, ch, cfg.dropout, g),
            AttentionBlock(ch, cfg.num_head_channels, g),
            ResBlock(ch, emb_dim, ch, cfg.dropout, g),
        )

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                layers = [ResBlock(ch + skip_channels.pop(), emb_dim, mc * mult, cfg.dropout, g)]
                ch = mc * mult
                if factor in cfg.attention_resolutions:
                    layers.append(AttentionBlock(ch, cfg.num_head_channels, g))
                if level and i == cfg.num_res_blocks:
                    layers.append(Upsample(ch))
                    factor //= 2
                self.output_blocks.append(TimestepSequential(*layers))

        self.out = nn.Sequential(_norm(ch, g), nn.SiLU(), nn.Conv2d(mc, cfg.out_channels, 3, padding=1))
        nn.init.zeros_(self.out[2].weight)
        nn.init.zeros_(self.out[2].bias)

    @property
    def downsampling(self) -> int:
        return 2 ** (len(self.config.channel_mult) - 1)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        emb = self.time_embed(timestep_embedding(timesteps, self.config.model_channels).to(x.dtype))
        skips = []
        h = x
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h)
