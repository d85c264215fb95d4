"""Noise schedule and DDIM sampler, separate from the networks (they hold no weights).

References: Ho et al. 2020, "Denoising Diffusion Probabilistic Models" (DDPM);
Song et al. 2021, "Denoising Diffusion Implicit Models" (DDIM), eq. 12 and 16.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import ConfigError

__all__ = ["ScheduleConfig", "SamplerConfig", "NoiseSchedule", "DDIMSampler"]


@dataclass(frozen=True)
class ScheduleConfig:
    """Training-time diffusion: ``timesteps`` steps, betas linear in sqrt space ("linear" of LDM)."""

    timesteps: int = 1000
    linear_start: float = 1e-4
    linear_end: float = 1e-2
    kind: str = "linear"
    parameterization: str = "eps"

    def __post_init__(self) -> None:
        if not 0 < self.linear_start <= self.linear_end < 1:
            raise ConfigError(
                f"invalid schedule: 'linear_start' ({self.linear_start!r}) must be <= 'linear_end' "
                f"({self.linear_end!r}), both in (0, 1): the betas grow over the diffusion (LDSR-S2 v1: "
                "linear_start 0.0001, linear_end 0.01)"
            )


@dataclass(frozen=True)
class SamplerConfig:
    """DDIM sampling defaults: number of steps, stochasticity ``eta`` (0 = deterministic), temperature."""

    steps: int = 100
    eta: float = 0.95
    temperature: float = 1.0


class NoiseSchedule:
    """The forward process q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I), t in [0, T)."""

    def __init__(self, cfg: ScheduleConfig) -> None:
        if cfg.kind != "linear":
            raise ValueError(f"unknown beta schedule {cfg.kind!r}; only 'linear' is implemented")
        if cfg.parameterization != "eps":
            raise ValueError(f"unknown parameterization {cfg.parameterization!r}; only 'eps' is implemented")
        self.config = cfg
        # betas linear in sqrt(beta), computed in float64 (LDM's "linear" schedule)
        self.betas = np.linspace(cfg.linear_start**0.5, cfg.linear_end**0.5, cfg.timesteps, dtype=np.float64) ** 2
        self.alphas_cumprod = np.cumprod(1.0 - self.betas)

    @property
    def num_timesteps(self) -> int:
        return self.config.timesteps

    def q_sample(
        self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor
    ) -> torch.Tensor:
        """Diffuse clean latents x0 (B, C, h, w) to step t (B,) with the given noise (DDPM eq. 4)."""
        abar = torch.as_tensor(self.alphas_cumprod, dtype=torch.float32, device=x0.device)[t]
        abar = abar.to(x0.dtype)[:, None, None, None]
        return abar.sqrt() * x0 + (1.0 - abar).sqrt() * noise


def ddim_timesteps(num_train_steps: int, steps: int) -> np.ndarray:
    """Uniformly spaced DDIM timesteps, ascending: 1, 1 + c, 1 + 2c, ... with c = T // steps."""
    if not 1 <= steps <= num_train_steps:
        raise ValueError(f"steps must be in [1, {num_train_steps}], got {steps}")
    stride = num_train_steps // steps
    return np.arange(0, num_train_steps, stride)[:steps] + 1


class DDIMSampler:
    """DDIM (Song et al. 2021) over a :class:`NoiseSchedule`.

    ``eta`` interpolates between deterministic DDIM (0) and DDPM-like ancestral sampling (1).
    The noise of each batch item comes from its own ``torch.Generator``, so an item's result
    depends only on its own seed, not on what it was batched with.
    """

    def __init__(self, schedule: NoiseSchedule, steps: int, eta: float, temperature: float = 1.0) -> None:
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        self.steps = steps
        self.eta = float(eta)
        self.temperature = float(temperature)
        self.timesteps = ddim_timesteps(schedule.num_timesteps, steps)
        acp = schedule.alphas_cumprod.astype(np.float32).astype(np.float64)
        self.alphas = acp[self.timesteps]
        self.alphas_prev = np.concatenate([[acp[0]], acp[self.timesteps[:-1]]])
        # eq. 16: sigma_t = eta * sqrt((1 - a_prev) / (1 - a_t)) * sqrt(1 - a_t / a_prev)
        self.sigmas = self.eta * np.sqrt(
            (1 - self.alphas_prev) / (1 - self.alphas) * (1 - self.alphas / self.alphas_prev)
        )

    def step(
        self,
        x: torch.Tensor,
        eps: torch.Tensor,
        index: int,
        noise: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One DDIM update x_t -> x_{t-1} at schedule position ``index`` (0 = last, smallest t).

        Returns (x_prev, predicted x0). ``noise`` (same shape as x) is required when sigma > 0.
        """
        a_t = float(self.alphas[index])
        a_prev = float(self.alphas_prev[index])
        sigma = float(self.sigmas[index])
        # (1) predicted x0 from the eps-prediction (eq. 12, first term)
        pred_x0 = (x - (1.0 - a_t) ** 0.5 * eps) / a_t**0.5
        # (2) direction pointing to x_t (eq. 12, second term)
        dir_xt = max(1.0 - a_prev - sigma**2, 0.0) ** 0.5 * eps
        x_prev = a_prev**0.5 * pred_x0 + dir_xt
        # (3) random noise (eq. 12, third term), scaled by the temperature
        if sigma > 0:
            if noise is None:
                raise ValueError("noise is required when eta > 0")
            x_prev = x_prev + sigma * self.temperature * noise
        return x_prev, pred_x0

    def sample(
        self,
        denoise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        shape: tuple[int, ...],
        generators: Sequence[torch.Generator],
        device: torch.device,
        dtype: torch.dtype = torch.float32,
        progress: Callable[[int], None] | None = None,
    ) -> torch.Tensor:
        """Run the reverse process from pure noise.

        ``denoise(x_t, t)`` returns eps for latents (B, C, h, w) and timesteps (B,).
        ``generators`` has one generator per batch item (B = ``shape[0]``).
        """
        if len(generators) != shape[0]:
            raise ValueError(f"need one generator per batch item: {len(generators)} for {shape[0]}")
        x = draw_noise(shape, generators, device, dtype)
        for i, t in enumerate(self.timesteps[::-1]):
            index = self.steps - 1 - i
            tt = torch.full((shape[0],), int(t), device=device, dtype=torch.long)
            eps = denoise(x, tt)
            noise = draw_noise(shape, generators, device, dtype) if self.sigmas[index] > 0 else None
            x, _ = self.step(x, eps, index, noise)
            if progress is not None:
                progress(i)
        return x


def draw_noise(
    shape: tuple[int, ...], generators: Sequence[torch.Generator], device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """Standard normal noise (B, ...), item b drawn from ``generators[b]`` (on the CPU, for
    reproducibility across devices), then moved to ``device``."""
    items = [torch.randn(shape[1:], generator=g, dtype=torch.float32) for g in generators]
    return torch.stack(items).to(device=device, dtype=dtype)
