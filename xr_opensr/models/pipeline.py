"""`SRModel`: LR reflectance -> samples of HR reflectance with a latent diffusion model.

Conditioning as in LDSR-S2 v1: the LR image is upsampled (bilinear) to the HR grid, encoded by the
autoencoder's encoder, and concatenated to the noisy latent along channels at every denoising step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..errors import DeviceError, InputError
from .autoencoder import AutoencoderKL
from .config import ModelConfig
from .diffusion import DDIMSampler, NoiseSchedule
from .unet import UNet

__all__ = ["SRModel", "match_histograms", "resolve_device", "item_generator"]

_DTYPES = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def resolve_device(device: str | torch.device | None) -> torch.device:
    """'auto'/None -> cuda if available else cpu; 'cuda' without a GPU raises DeviceError."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(
            f"device={str(device)!r} was requested but torch sees no CUDA GPU "
            f"(torch {torch.__version__}); use device='cpu' or device='auto'"
        )
    return dev


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """None -> float32. Reduced precision (bfloat16/float16) is only allowed on a GPU."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise InputError(f"dtype={dtype!r} is not supported; use one of {sorted(_DTYPES)}")
        dtype = _DTYPES[dtype]
    if dtype not in _DTYPES.values():
        raise InputError(f"dtype={dtype} is not supported; use torch.float32, torch.bfloat16 or torch.float16")
    if dtype != torch.float32 and device.type != "cuda":
        raise InputError(f"dtype={dtype} needs a CUDA device (got {device}); use dtype=None (float32) on the CPU")
    return dtype


def item_generator(seed: int, sample_index: int) -> torch.Generator:
    """CPU generator for (input seed, sample index): independent streams, batching-invariant."""
    state = np.random.SeedSequence(entropy=int(seed) & (2**128 - 1), spawn_key=(int(sample_index),))
    lo, hi = state.generate_state(2, dtype=np.uint32)
    gen = torch.Generator(device="cpu")
    gen.manual_seed(int(lo) | (int(hi & 0x7FFFFFFF) << 32))
    return gen


def match_histograms(source: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Map the values of ``source`` so its empirical CDF matches ``reference`` (1-D or any shape).

    NaNs are ignored in both and kept in the output. Quantile mapping with linear interpolation
    between the reference's distinct values.
    """
    out = np.array(source, dtype=np.float64, copy=True)
    valid = np.isfinite(out)
    ref = np.asarray(reference, dtype=np.float64)
    ref = ref[np.isfinite(ref)]
    if not valid.any() or ref.size == 0:
        return out.astype(np.float32)
    src_values, src_index, src_counts = np.unique(out[valid], return_inverse=True, return_counts=True)
    ref_values, ref_counts = np.unique(ref, return_counts=True)
    src_quantiles = np.cumsum(src_counts) / src_counts.sum()
    ref_quantiles = np.cumsum(ref_counts) / ref_counts.sum()
    mapped = np.interp(src_quantiles, ref_quantiles, ref_values)
    out[valid] = mapped[src_index.ravel()]
    return out.astype(np.float32)


class SRModel(nn.Module):
    """Latent diffusion super-resolution model (autoencoder + denoising UNet + DDIM).

    Build it with :func:`xr_opensr.load_model`; ``SRModel(config)`` gives random weights.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.autoencoder = AutoencoderKL(config.autoencoder)
        self.denoiser = UNet(config.denoiser)
        self.schedule = NoiseSchedule(config.schedule)
        self.eval()

    # ------------------------------------------------------------------ placement
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """Compute dtype of the denoiser (the autoencoder always runs in float32)."""
        return next(self.denoiser.parameters()).dtype

    def place(self, device: str | torch.device | None = "auto", dtype: str | torch.dtype | None = None) -> SRModel:
        """Move to ``device`` and run the denoiser in ``dtype``; returns self."""
        dev = resolve_device(device)
        dt = resolve_dtype(dtype, dev)
        self.to(dev)
        self.denoiser.to(dt)
        return self

    # ------------------------------------------------------------------ pieces
    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        gain = torch.tensor(self.config.input_gain, dtype=x.dtype, device=x.device)[:, None, None]
        offset = torch.tensor(self.config.input_offset, dtype=x.dtype, device=x.device)[:, None, None]
        return x * gain + offset

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        gain = torch.tensor(self.config.input_gain, dtype=x.dtype, device=x.device)[:, None, None]
        offset = torch.tensor(self.config.input_offset, dtype=x.dtype, device=x.device)[:, None, None]
        return (x - offset) / gain

    def encode_condition(self, lr: torch.Tensor):
        """Normalised LR (B, C, h, w) -> encoder posterior over (B, E, h, w) latents."""
        s = self.config.scale
        up = F.interpolate(lr, size=(lr.shape[-2] * s, lr.shape[-1] * s), mode="bilinear", align_corners=False)
        return self.autoencoder.encode(up)

    def denoise(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """eps prediction for noisy latents (B, E, h, w) given the condition latents (B, E, h, w)."""
        dt = self.dtype
        return self.denoiser(torch.cat([x_t, cond], dim=1).to(dt), t).float()

    # ------------------------------------------------------------------ sampling
    def batch_limit(self, h: int, w: int, memory_budget_mb: float | None = None) -> int:
        """How many latents of size (h, w) go through the UNet together under the memory budget."""
        if memory_budget_mb is None:
            if self.device.type == "cuda":
                free, _ = torch.cuda.mem_get_info(self.device)
                memory_budget_mb = 0.5 * free / 2**20
            else:
                memory_budget_mb = 2048.0
        cfg = self.config.denoiser
        bytes_per = torch.finfo(self.dtype).bits // 8
        # rough activation footprint of one latent through the UNet: ~24 feature maps at full width
        per_item = 24 * cfg.model_channels * max(cfg.channel_mult) * h * w * bytes_per
        # attention maps at the coarsest attended resolution
        per_item += 4 * (h * w) ** 2 * bytes_per // max(1, min(cfg.attention_resolutions or (1,))) ** 4
        return max(1, int(memory_budget_mb * 2**20 // max(per_item, 1)))

    @torch.no_grad()
    def sample(
        self,
        lr: Any,
        samples: int = 1,
        steps: int | None = None,
        eta: float | None = None,
        seed: int | Sequence[int] = 0,
        *,
        temperature: float | None = None,
        histogram_matching: bool = True,
        memory_budget_mb: float | None = None,
        batch_invariant: bool = True,
        consistency: bool = True,
    ) -> Any:
        """Draw super-resolved samples.

        Parameters
        ----------
        lr : array (B, C, h, w) of reflectance (numpy or torch), C = len(config.bands); NaN = nodata.
        samples : samples per input.
        steps, eta, temperature : DDIM settings (defaults from ``config.sampler``).
        seed : int, or one int per input; the noise of input b depends only on ``seed[b]``.
        histogram_matching : match each band of each sample to the LR band's histogram.
        consistency : then apply the model's consistency step (``config.consistency``: back-project
            the LR into each sample; a no-op for models without one). False: the raw samples.
        memory_budget_mb : memory for one batch of latents through the UNet (default: half the free
            GPU memory, 2 GiB on the CPU); more samples than fit are split into equal batches.
        batch_invariant : run each input's samples as batches of their own fixed size, so an input's
            result is the same whatever it is batched with (bit for bit on a given machine). False
            batches across inputs too: faster for many small inputs, equal only to ~1e-6.

        Returns
        -------
        (B, samples, C, scale*h, scale*w) float32, the same array type as ``lr``; pixels under a
        nodata LR pixel (NaN in any band) are NaN in every band.
        """
        is_numpy = not isinstance(lr, torch.Tensor)
        x = torch.as_tensor(np.asarray(lr) if is_numpy else lr)
        cfg = self.config
        if x.ndim != 4:
            raise InputError(f"lr must have shape (B, C, h, w), got {tuple(x.shape)}")
        if x.shape[1] != len(cfg.bands):
            raise InputError(
                f"lr has {x.shape[1]} bands but model {cfg.name!r} expects {len(cfg.bands)} "
                f"in the order {list(cfg.bands)}"
            )
        if not (x.dtype.is_floating_point or x.dtype in (torch.uint8, torch.int16, torch.int32, torch.int64)):
            raise InputError(f"lr must be real-valued reflectance, got dtype {x.dtype}")
        if not isinstance(samples, int | np.integer) or samples < 1:
            raise InputError(f"samples must be a positive integer, got {samples!r}")
        steps = cfg.sampler.steps if steps is None else steps
        if not isinstance(steps, int | np.integer) or not 1 <= steps <= cfg.schedule.timesteps:
            raise InputError(f"steps must be an integer in [1, {cfg.schedule.timesteps}], got {steps!r}")
        eta = cfg.sampler.eta if eta is None else float(eta)
        if eta < 0:
            raise InputError(f"eta must be >= 0, got {eta}")
        temperature = cfg.sampler.temperature if temperature is None else float(temperature)
        b, c, h, w = x.shape
        seeds = [int(seed)] * b if isinstance(seed, int | np.integer) else [int(s) for s in seed]
        if len(seeds) != b:
            raise InputError(f"seed must be an int or one int per input ({b}), got {len(seeds)}")

        x = x.to(torch.float32).cpu()
        invalid = ~torch.isfinite(x).all(dim=1)  # (B, h, w): nodata in any band
        s = cfg.scale
        out = torch.full((b, samples, c, s * h, s * w), float("nan"), dtype=torch.float32)
        todo = [i for i in range(b) if not bool(invalid[i].all())]
        if todo:
            hr = self._sample_valid(
                x[todo], invalid[todo], samples, steps, eta, temperature,
                [seeds[i] for i in todo], histogram_matching, memory_budget_mb, batch_invariant, consistency,
            )
            out[todo] = hr
        return out.numpy() if is_numpy else out

    def _sample_valid(
        self,
        x: torch.Tensor,
        invalid: torch.Tensor,
        samples: int,
        steps: int,
        eta: float,
        temperature: float,
        seeds: list[int],
        histogram_matching: bool,
        memory_budget_mb: float | None,
        batch_invariant: bool,
        consistency: bool = True,
    ) -> torch.Tensor:
        cfg = self.config
        b, c, h, w = x.shape
        s = cfg.scale
        # nodata: fill with the band's valid mean so the networks see plausible values
        fill = torch.where(invalid[:, None], torch.nan, x).nanmean(dim=(2, 3), keepdim=True)
        x_filled = torch.where(invalid[:, None], fill.expand_as(x), x)

        # pad to at least the patch size and to a multiple of the UNet factor (reflect, then replicate)
        factor = 2 ** (len(cfg.denoiser.channel_mult) - 1)
        ph, pw = _padded_size(h, cfg.patch_size, factor), _padded_size(w, cfg.patch_size, factor)
        x_pad = _pad_to(x_filled, ph, pw)

        device = self.device
        xn = self.normalize(x_pad).to(device)
        if batch_invariant:  # each input alone: its result never depends on its batch mates
            posts = [self.encode_condition(xn[i : i + 1]) for i in range(b)]
            cond_mean = torch.cat([p.mean for p in posts])
            cond_std = torch.cat([p.std for p in posts])
        else:
            post = self.encode_condition(xn)
            cond_mean, cond_std = post.mean, post.std

        # the (B*S) latents: item index k = i * samples + j, with generator (seed_i, j)
        n = b * samples
        gens = [item_generator(seeds[k // samples], k % samples) for k in range(n)]
        limit = self.batch_limit(ph, pw, memory_budget_mb)
        if batch_invariant:
            size = min(samples, limit)
            groups = [list(range(i * samples + a, min(i * samples + a + size, (i + 1) * samples)))
                      for i in range(b) for a in range(0, samples, size)]
        else:
            size = limit
            groups = [list(range(a, min(a + size, n))) for a in range(0, n, size)]
        sampler = DDIMSampler(self.schedule, steps, eta, temperature)
        decoded_parts = []
        for ks in groups:
            if not batch_invariant:
                size = len(ks)
            # pad every group to the same batch size with throw-away items (fixed kernel shapes)
            idx = [k // samples for k in ks] + [ks[-1] // samples] * (size - len(ks))
            group_gens = [gens[k] for k in ks] + [torch.Generator().manual_seed(0) for _ in range(size - len(ks))]
            mean = cond_mean[idx]
            if cfg.conditioning == "sample":
                noise = torch.stack([torch.randn(mean.shape[1:], generator=g) for g in group_gens]).to(device)
                cond = mean + cond_std[idx] * noise
            else:
                cond = mean
            z = sampler.sample(
                lambda x_t, t, cond=cond: self.denoise(x_t, t, cond),
                tuple(mean.shape), group_gens, device, torch.float32,
            )
            decoded_parts.append(self.autoencoder.decode(z)[: len(ks)])
        decoded = torch.cat(decoded_parts)
        hr = self.denormalize(decoded.float()).cpu()[..., : s * h, : s * w]
        hr = hr.reshape(b, samples, c, s * h, s * w)

        hr_invalid = invalid.repeat_interleave(s, dim=1).repeat_interleave(s, dim=2)  # (B, sH, sW)
        hr = torch.where(hr_invalid[:, None, None], torch.nan, hr)
        if histogram_matching:
            lr_np = torch.where(invalid[:, None], torch.nan, x).numpy()
            hr_np = hr.numpy()
            for i in range(b):
                for j in range(samples):
                    for band in range(c):
                        hr_np[i, j, band] = match_histograms(hr_np[i, j, band], lr_np[i, band])
            hr = torch.from_numpy(hr_np)
        if consistency and cfg.consistency.active:
            hr = torch.from_numpy(self.apply_consistency(hr.numpy(), x_filled.numpy(), invalid.numpy()))
        return hr.clamp_min(0.0)

    def apply_consistency(self, samples: np.ndarray, lr: np.ndarray, invalid: np.ndarray | None = None) -> np.ndarray:
        """The model's consistency step (``config.consistency``) on samples (B, S, C, H, W) of the LR
        (B, C, h, w); ``invalid`` (B, h, w) marks nodata LR pixels, whose HR pixels stay NaN (and
        ``lr`` must be finite elsewhere). Returns a new float32 array; unchanged when the step is off."""
        from ..metrics import bicubic_upsample
        from .consistency import enforce_consistency

        cfg = self.config
        if not cfg.consistency.active:
            return samples
        lr = np.asarray(lr, dtype=np.float32)
        if invalid is None:
            invalid = ~np.isfinite(lr).all(axis=1)
        if invalid.any():  # nodata: a plain bicubic stands in for the NaN pixels during the step
            fill = np.nanmean(np.where(invalid[:, None], np.nan, lr), axis=(2, 3), keepdims=True)
            lr = np.where(invalid[:, None], fill, lr)
        hr_invalid = invalid.repeat(cfg.scale, axis=1).repeat(cfg.scale, axis=2)[:, None, None]
        stand_in = np.asarray(bicubic_upsample(lr, cfg.scale), dtype=np.float32)[:, None]
        out = enforce_consistency(np.where(hr_invalid, stand_in, samples), lr[:, None], cfg.scale, cfg.consistency)
        return np.where(hr_invalid, np.float32(np.nan), out).astype(np.float32)

    def summarize(self, out: Any) -> tuple[Any, Any]:
        """Samples (B, S, C, H, W) -> (mean, std), each (B, C, H, W).

        ``std`` is the per-band sample standard deviation (ddof=1) times ``config.std_scale``;
        zero where S == 1.
        """
        is_numpy = not isinstance(out, torch.Tensor)
        t = torch.as_tensor(out)
        mean = t.mean(dim=1)
        if t.shape[1] > 1:
            std = t.std(dim=1, correction=1) * self.config.std_scale
        else:
            std = torch.where(torch.isnan(mean), torch.nan, torch.zeros_like(mean))
        if is_numpy:
            return mean.numpy(), std.numpy()
        return mean, std

    def extra_repr(self) -> str:
        n = sum(p.numel() for p in self.parameters())
        return f"name={self.config.name!r}, version={self.config.version!r}, parameters={n:,}"


def _padded_size(n: int, minimum: int, factor: int) -> int:
    return max(minimum, math.ceil(n / factor) * factor)


def _pad_to(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Pad (B, C, h, w) at the bottom/right to (height, width): reflect while possible, then replicate."""
    while x.shape[-2] < height or x.shape[-1] < width:
        dh, dw = height - x.shape[-2], width - x.shape[-1]
        rh, rw = min(dh, x.shape[-2] - 1), min(dw, x.shape[-1] - 1)
        if rh > 0 or rw > 0:
            x = F.pad(x, (0, max(rw, 0), 0, max(rh, 0)), mode="reflect")
        else:
            x = F.pad(x, (0, dw, 0, dh), mode="replicate")
    return x
