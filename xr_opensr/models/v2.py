"""Model v2 (kind ``"ldm+mean"``, the default): a mean network composed with a diffusion model.

Two parts, each a network of its own with its own weights file (the diffusion part's
``model.safetensors`` is the one of the diffusion model it was built on):

* the **mean network** (:class:`~xr_opensr.models.regression.RegressionNet`) gives the mean ``m`` (then
  the consistency step) and, from its spread head, the standard deviation ``u`` (times ``std_scale``,
  calibrated on validation scenes);
* the **diffusion model** (:class:`~xr_opensr.models.pipeline.SRModel`) gives the samples' detail: with
  ``x_1..x_S`` its samples of a patch, ``xbar`` their mean and ``sd`` their standard deviation per pixel,
  sample ``j`` is ``m + u * (x_j - xbar) / sd``.

So the samples' mean is ``m`` and their standard deviation ``u`` exactly, for any number of samples >= 2
(one sample: ``m``, std 0): ``sr`` and ``uncertainty`` do not depend on the diffusion model, which runs
only when the samples themselves are asked for. These samples are not clipped at 0; ``superresolve``
moves its (blended) samples with :func:`~xr_opensr.models.pipeline.samples_with_moments`, which also
keeps them >= 0. ``samples=0`` (the fast deterministic path) returns ``m`` alone, with NaN as uncertainty.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError, InputError
from .base import ModelInfo
from .config import ModelConfig
from .pipeline import (
    SRModel,
    SummaryRun,
    _channels_last_once,
    _fill_nodata,
    _standardise,
    _to_device,
    _to_host,
    consistency_step,
    model_info,
)
from .regression import LAPLACE_STD, RegressionNet

__all__ = ["MeanSpreadModel"]


class MeanSpreadModel(SummaryRun, nn.Module):
    """Model v2: :attr:`mean_net` (mean and spread) composed with :attr:`diffusion` (the samples' detail:
    an :class:`SRModel` of the config without its ``mean_net``). ``MeanSpreadModel(config)`` has random
    weights; :func:`xr_opensr.load_model` loads them."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.mean_net is None:
            raise ConfigError(f"model {config.name!r} has no mean_net: a model v2 needs one (kind 'ldm+mean')")
        self.config = config
        self.diffusion = SRModel(config.replace(mean_net=None))
        self.mean_net = RegressionNet(config.mean_net, config.bands, config.scale, config.input_gain,
                                      config.input_offset)
        self.eval()

    @property
    def info(self) -> ModelInfo:
        """What the model declares: the diffusion model's description, with a mean for ``samples=0`` and
        the receptive-field halo of its mean and spread (:func:`mean_path_halo`)."""
        return dataclasses.replace(model_info(self.config, mean_without_samples=True),
                                   halo=mean_path_halo(self.config))

    @property
    def device(self) -> torch.device:
        return self.diffusion.device

    def place(self, device: Any = "auto", dtype: Any = None) -> MeanSpreadModel:
        """Both parts to ``device``; the diffusion model's denoiser computes in ``dtype``, the mean
        network in float32. Returns self."""
        self.diffusion.place(device, dtype)
        self.mean_net.to(self.diffusion.device)
        return self

    def prepare_inference(self) -> MeanSpreadModel:
        """Once per model: channels_last weights of both parts; returns self."""
        self.diffusion.prepare_inference()
        _channels_last_once(self.mean_net)
        return self

    def compile_denoiser(self, mode: str = "reduce-overhead") -> MeanSpreadModel:
        """The diffusion model's denoiser through ``torch.compile``; returns self."""
        self.diffusion.compile_denoiser(mode)
        return self

    # ------------------------------------------------------------------ sampling
    @torch.inference_mode()
    def sample(self, lr: Any, samples: int = 1, steps: int | None = None, eta: float | None = None,
               seed: int | Sequence[int] = 0, *, histogram_matching: bool = True, batch_size: int | None = None,
               **_: Any) -> Any:
        """The samples (B, samples, C, s*h, s*w) of :meth:`sample_summary`, the array type of ``lr``: built
        around the mean, which had the consistency step (the other keywords of :meth:`SRModel.sample`
        are accepted and mean nothing here)."""
        is_numpy = not isinstance(lr, torch.Tensor)
        out = self.sample_summary(np.asarray(lr) if is_numpy else lr.numpy(), samples, steps, eta, seed,
                                  histogram_matching=histogram_matching, batch_size=batch_size,
                                  return_samples=True)[:, 2:]
        return out if is_numpy else torch.from_numpy(out)

    @torch.inference_mode()
    def sample_summary(self, lr: Any, samples: int = 1, steps: int | None = None, eta: float | None = None,
                       seed: int | Sequence[int] = 0, *, histogram_matching: bool = True,
                       batch_size: int | None = None, return_samples: bool = False) -> np.ndarray:
        """The mean network's mean and calibrated spread, and the samples built around them (module
        docstring); the layout of :meth:`SRModel.sample_summary`. ``samples=0`` gives the mean alone
        (uncertainty NaN); one sample: the mean, uncertainty 0."""
        if not isinstance(samples, int | np.integer) or samples < 0:
            raise InputError(f"samples must be an integer >= 0, got {samples!r}")
        diffusion = self.diffusion
        run = diffusion._run(lr, max(int(samples), 1), steps, eta, seed, None, histogram_matching, True, None,
                             batch_size, True)
        b, c, h, w = run.x.shape
        s = self.config.scale
        out = np.full((b, 2 + (samples if return_samples else 0), c, s * h, s * w), np.nan, dtype=np.float32)
        if not run.todo:
            return out
        mean, unit = self.mean_and_spread(run.x[run.todo], run.invalid[run.todo], spread=samples >= 2)
        if samples >= 2:
            std = unit * np.float32(self.config.std_scale)
        else:  # one sample has no spread; samples=0: not computed
            std = np.where(np.isnan(mean), np.float32(np.nan), np.float32(0.0 if samples == 1 else np.nan))
        out[run.todo, 0], out[run.todo, 1] = mean, std
        if return_samples and samples >= 2:  # the diffusion samples standardised per pixel (where they all
            # agree, a standardised ramp over the sample index), times std, plus the mean; not clipped at 0
            detail = np.empty((len(run.todo), samples, c, s * h, s * w), dtype=np.float32)
            for ks, hr in diffusion._generate(run):
                for k, value in zip(ks, hr):
                    detail[k // samples, k % samples] = value
            z = _standardise(detail.astype(np.float64), axis=1)
            out[run.todo, 2:] = (mean[:, None] + std[:, None] * z).astype(np.float32)
        elif return_samples and samples == 1:
            out[run.todo, 2] = mean
        return out

    @torch.inference_mode()
    def mean_and_spread(self, x: torch.Tensor, invalid: torch.Tensor, *,
                        spread: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """The mean network's mean (then the consistency step) and its uncalibrated standard deviation for
        LR (B, C, h, w) float32 with ``invalid`` (B, h, w) nodata pixels, one input per network call
        (batch-invariant); each (B, C, s*h, s*w) float32, NaN under nodata, mean >= 0.
        ``spread=False`` skips the spread head (zeros instead)."""
        from ..sensor import bicubic_upsample

        self.prepare_inference()
        cfg, device = self.config, self.device
        s = cfg.scale
        x_filled = torch.stack([_fill_nodata(x[i], invalid[i]) for i in range(x.shape[0])])
        means, stds = [], []
        for i in range(x.shape[0]):
            xi = x_filled[i : i + 1]
            base = torch.from_numpy(np.asarray(bicubic_upsample(xi.numpy(), s), dtype=np.float32))
            m, scale = self.mean_net.mean_and_scale(_to_device(xi, device), _to_device(base, device), spread=spread)
            means.append(_to_host(m))
            stds.append(_to_host(LAPLACE_STD * scale) if scale is not None else np.zeros_like(means[-1]))
        inv = invalid.numpy()
        mean = consistency_step(np.concatenate(means)[:, None], x_filled.numpy(), s, cfg.consistency, inv)[:, 0]
        hr_invalid = inv.repeat(s, axis=1).repeat(s, axis=2)[:, None]
        mean = np.where(hr_invalid, np.float32(np.nan), np.maximum(mean, np.float32(0.0)))
        std = np.where(hr_invalid, np.float32(np.nan), np.concatenate(stds))
        return mean.astype(np.float32), std.astype(np.float32)

    def summarize(self, out: Any) -> tuple[Any, Any]:
        """Samples (B, S, C, H, W) -> (mean, std): the samples carry the calibrated spread already."""
        return self.diffusion.summarize(out, std_scale=1.0)


#: LR pixels a Keys cubic upsampling reaches on each side (4 taps: -1 .. +2)
_CUBIC_REACH = 2


def mean_path_halo(config: ModelConfig) -> int:
    """The receptive-field halo (LR pixels, plus 1) of model v2's mean and spread, from its config.

    The mean network's features see ``2 + 2 * blocks`` LR pixels around a pixel (head, two 3x3
    convolutions per residual block, body_out), the mean one more (the up convolution) or the bicubic
    base's reach, whichever is more; each consistency step adds the PSF's reach (its radius
    ``int(4 * psf_sigma + 0.5)`` HR pixels, in LR pixels rounded up) and the bicubic upsampling's; the
    spread head adds its ``uncertainty_depth`` convolutions to its inputs (the features, and with
    ``uncertainty_detail`` the mean's detail and the bicubic gradient). Where the input has no nodata,
    the mean and the uncertainty of a pixel then depend only on the LR pixels within this many pixels,
    so tiles cropped to their centre give the whole-image result (``_graph`` with ``crop=True``);
    ``tests/test_halo.py`` checks it against :func:`xr_opensr.models.halo.receptive_halo`. Diffusion
    samples are not local (their patch's noise, histogram matching): they are blended.
    """
    net, s = config.mean_net, config.scale
    features = 2 + 2 * net.blocks
    mean = max(features + 1, _CUBIC_REACH)
    step = config.consistency
    if step.active:
        psf = int(4.0 * step.psf_sigma + 0.5) if step.kernel == "psf" else 0
        mean += step.iterations * (-(-psf // s) + _CUBIC_REACH)
    spread = 0
    if net.uncertainty_channels:
        inputs = max(features, features + 1, _CUBIC_REACH + 1) if net.uncertainty_detail else features
        spread = inputs + net.uncertainty_depth
    return max(mean, spread) + 1

