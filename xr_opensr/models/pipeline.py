"""`SRModel`: LR reflectance -> samples of HR reflectance with a latent diffusion model (kind ``"ldm"``).

Conditioning as in LDSR-S2 v1: the LR image is upsampled (bilinear) to the HR grid, encoded by the
autoencoder's encoder, and concatenated to the noisy latent along channels at every denoising step.
The mean and the standard deviation of the diffusion samples are the SR and its uncertainty (LDSR-S2
v1, ``tiny``). Model v2 composes this model with a mean network: :mod:`xr_opensr.models.v2`.

Also here: the consistency step of every model (:func:`consistency_step`) and
:func:`samples_with_moments`, which ``superresolve`` uses to move blended samples to the blended
mean and standard deviation.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..errors import ConfigError, DeviceError, InputError
from .autoencoder import AutoencoderKL
from .base import MAX_SAMPLES, ModelInfo, SampleOptions, Sampling
from .config import ModelConfig
from .consistency import ConsistencyConfig
from .diffusion import DDIMSampler, NoiseSchedule
from .unet import UNet

__all__ = ["SRModel", "match_histograms", "resolve_device", "item_generator", "samples_with_moments", "MAX_SAMPLES",
           "consistency_step", "model_info", "SummaryRun"]


#: memory for one network call on the CPU (larger batches gain nothing there: see batch_limit)
_CPU_BUDGET_MB = 256.0
_CPU_MAX_BATCH = 32

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
    """None -> float32. bfloat16 on a GPU or the CPU (fast on CPUs with AMX or AVX512-BF16, e.g.
    Intel Sapphire Rapids and later; slow elsewhere); float16 only on a GPU."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise InputError(f"dtype={dtype!r} is not supported; use one of {sorted(_DTYPES)}")
        dtype = _DTYPES[dtype]
    if dtype not in _DTYPES.values():
        raise InputError(f"dtype={dtype} is not supported; use torch.float32, torch.bfloat16 or torch.float16")
    if dtype == torch.float16 and device.type != "cuda":
        raise InputError(f"dtype={dtype} needs a CUDA device (got {device}); use dtype=None (float32) or "
                         "'bfloat16' on the CPU")
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


#: serialises the one-time channels_last conversion of a model shared by threads
_PREPARE_LOCK = threading.Lock()


def model_info(cfg: ModelConfig, *, mean_without_samples: bool) -> ModelInfo:
    """The :class:`~xr_opensr.models.base.ModelInfo` of a model of config ``cfg`` (a diffusion model,
    or model v2 with ``mean_without_samples``)."""
    return ModelInfo(
        name=cfg.name, version=cfg.version, bands=tuple(cfg.bands), scale=cfg.scale, patch=cfg.patch_size,
        overlap=cfg.default_overlap, patch_multiple=2 ** (len(cfg.denoiser.channel_mult) - 1),
        sampling=Sampling(cfg.sampler.steps, cfg.sampler.eta, cfg.schedule.timesteps),
        mean_without_samples=mean_without_samples, std_scale=cfg.std_scale, consistency=cfg.consistency.describe(),
        trained=bool(cfg.provenance.get("trained", True)),
    )


class SummaryRun:
    """:meth:`run` of the model protocol (:class:`~xr_opensr.models.base.Model`) for a model with a
    ``sample_summary`` method: one call with the options spelled out."""

    def run(self, patches: np.ndarray, seeds: np.ndarray, options: SampleOptions) -> np.ndarray:
        """(N, C, P, P) float32 reflectance (NaN = nodata), (N,) seeds -> (N, K, C, sP, sP) float32."""
        return self.sample_summary(patches, samples=options.samples, steps=options.steps, eta=options.eta,
                                   seed=[int(v) for v in seeds], histogram_matching=options.histogram_matching,
                                   batch_size=options.batch_size, return_samples=options.return_samples)


def _channels_last_once(net: nn.Module) -> None:
    """Once per module: channels_last weights (faster convolutions with oneDNN and cuDNN; outputs change
    only by float rounding). Under a lock: converting swaps the parameters' storage, and a dask thread
    already running this (process-shared) model must never read a storage that another thread frees."""
    if getattr(net, "_inference_ready", False):
        return
    with _PREPARE_LOCK:
        if not getattr(net, "_inference_ready", False):
            net.to(memory_format=torch.channels_last)
            net._inference_ready = True


class SRModel(SummaryRun, nn.Module):
    """Latent diffusion super-resolution model (autoencoder + denoising UNet + DDIM).

    Build it with :func:`xr_opensr.load_model`; ``SRModel(config)`` gives random weights.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.mean_net is not None:
            raise ConfigError(f"model {config.name!r} has a mean_net: build it with xr_opensr.models.v2.MeanSpreadModel")
        self.config = config
        self.autoencoder = AutoencoderKL(config.autoencoder)
        self.denoiser = UNet(config.denoiser)
        self.schedule = NoiseSchedule(config.schedule)
        self.eval()

    @property
    def info(self) -> ModelInfo:
        """What the model declares (:class:`~xr_opensr.models.base.ModelInfo`), from its config."""
        return model_info(self.config, mean_without_samples=False)

    # ------------------------------------------------------------------ placement
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """Compute dtype of the denoiser and the decoder (the encoder always runs in float32)."""
        return next(self.denoiser.parameters()).dtype

    def place(self, device: str | torch.device | None = "auto", dtype: str | torch.dtype | None = None) -> SRModel:
        """Move to ``device`` and run the denoiser in ``dtype``; returns self."""
        dev = resolve_device(device)
        dt = resolve_dtype(dtype, dev)
        self.to(dev)
        self.denoiser.to(dt)
        return self

    # ------------------------------------------------------------------ pieces
    def _gain_offset(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return tuple(torch.tensor(v, dtype=x.dtype, device=x.device)[:, None, None]
                     for v in (self.config.input_gain, self.config.input_offset))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        gain, offset = self._gain_offset(x)
        return x * gain + offset

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        gain, offset = self._gain_offset(x)
        return (x - offset) / gain

    def encode_condition(self, lr: torch.Tensor):
        """Normalised LR (B, C, h, w) -> encoder posterior over (B, E, h, w) latents."""
        s = self.config.scale
        up = F.interpolate(lr, size=(lr.shape[-2] * s, lr.shape[-1] * s), mode="bilinear", align_corners=False)
        return self.autoencoder.encode(up)

    def denoise(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """eps prediction for noisy latents (B, E, h, w) given the condition latents (B, E, h, w)."""
        dt = self.dtype
        net = getattr(self, "_compiled", None) or self.denoiser
        x = torch.cat([x_t, cond], dim=1).to(dt).contiguous(memory_format=torch.channels_last)
        return net(x, t).float()

    def batch_limit(self, h: int, w: int, memory_budget_mb: float | None = None) -> int:
        """Latents of size (h, w) per network call under the memory budget: a function of the
        model, the device *type and size* and the budget only (never of the free memory at the
        moment), so that a run's batch shape, and hence its results, are reproducible.

        Default budget: a quarter of the GPU's total memory; on the CPU 256 MiB and at most 32
        latents (the UNet gains from batching up to about that; the decoder runs one latent at a
        time there, see :meth:`_run`).
        """
        if memory_budget_mb is None:
            if self.device.type == "cuda":
                total = torch.cuda.get_device_properties(self.device).total_memory
                memory_budget_mb = 0.25 * total / 2**20
            else:
                memory_budget_mb = _CPU_BUDGET_MB
        cfg, ae = self.config.denoiser, self.config.autoencoder
        bytes_per = torch.finfo(self.dtype).bits // 8
        # rough activation footprint of one latent through the UNet: ~24 feature maps at full width
        per_item = 24 * cfg.model_channels * max(cfg.channel_mult) * h * w * bytes_per
        # attention maps at the coarsest attended resolution
        per_item += 4 * (h * w) ** 2 * bytes_per // max(1, min(cfg.attention_resolutions or (1,))) ** 4
        if self.device.type == "cpu":
            return max(1, min(_CPU_MAX_BATCH, int(memory_budget_mb * 2**20 // max(per_item, 1))))
        # the decoder at full resolution: ~6 maps of ch * ch_mult[0] channels of (s*h, s*w) pixels
        s = self.config.scale
        per_item = max(per_item, 6 * ae.ch * ae.ch_mult[0] * s * h * s * w * bytes_per)
        return max(1, int(memory_budget_mb * 2**20 // max(per_item, 1)))

    def prepare_inference(self) -> SRModel:
        """Once per model: channels_last weights (:func:`_channels_last_once`); returns self."""
        _channels_last_once(self)
        return self

    def compile_denoiser(self, mode: str = "reduce-overhead") -> SRModel:
        """Run the denoiser through ``torch.compile`` (``mode="reduce-overhead"`` = CUDA graphs on a
        GPU; the batch shape is fixed, so it compiles once). Returns self."""
        self._compiled = torch.compile(self.denoiser, mode=mode, dynamic=False)
        return self

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents (B, E, h, w) -> normalised images (B, C, s*h, s*w) float32; the decoder runs in the
        model's compute dtype (bfloat16/float16 under autocast on a GPU, else float32)."""
        dt = self.dtype
        with torch.autocast(z.device.type, dtype=dt, enabled=dt != torch.float32):
            return self.autoencoder.decode(z.contiguous(memory_format=torch.channels_last)).float()

    # ------------------------------------------------------------------ sampling
    @torch.inference_mode()
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
        batch_size: int | None = None,
        batch_invariant: bool = True,
        consistency: bool = True,
    ) -> Any:
        """Draw super-resolved samples.

        Parameters
        ----------
        lr : array (B, C, h, w) of reflectance (numpy or torch), C = len(config.bands); NaN = nodata.
        samples : samples per input (at most :data:`MAX_SAMPLES`).
        steps, eta, temperature : DDIM settings (defaults from ``config.sampler``).
        seed : int, or one int per input; the noise of input b depends only on ``seed[b]``.
        histogram_matching : match each band of each sample to the LR band's histogram.
        consistency : then apply the model's consistency step (``config.consistency``: back-project
            the LR into each sample; a no-op for models without one). False: the raw samples.
        memory_budget_mb, batch_size : latents per denoiser call: ``batch_size``, else as many as
            fit in ``memory_budget_mb`` (:meth:`batch_limit`; on the CPU rounded up to a multiple of
            torch's thread count). The (input, sample) latents of all inputs go through the DDIM loop
            together in calls of exactly this many (the last padded); the decoder takes one latent
            per call on the CPU and the whole call on a GPU.
        batch_invariant : pad the last call to the full batch size, so that every call has the same
            shape and an input's result does not depend on its batch mates, its position in the batch
            or how many inputs there are (bit for bit on the CPU; see docs/design.md for GPUs).
            False: the last call holds only what is left (faster for a single small call).

        Returns
        -------
        (B, samples, C, scale*h, scale*w) float32, the same array type as ``lr``; pixels under a
        nodata LR pixel (NaN in any band) are NaN in every band.
        """
        is_numpy = not isinstance(lr, torch.Tensor)
        run = self._run(lr, samples, steps, eta, seed, temperature, histogram_matching, consistency,
                        memory_budget_mb, batch_size, batch_invariant)
        b, c, h, w = run.x.shape
        s = self.config.scale
        out = np.full((b, samples, c, s * h, s * w), np.nan, dtype=np.float32)
        for ks, hr in self._generate(run):
            for k, value in zip(ks, hr):
                out[run.todo[k // samples], k % samples] = value
        return out if is_numpy else torch.from_numpy(out)

    @torch.inference_mode()
    def sample_summary(
        self,
        lr: Any,
        samples: int = 1,
        steps: int | None = None,
        eta: float | None = None,
        seed: int | Sequence[int] = 0,
        *,
        histogram_matching: bool = True,
        batch_size: int | None = None,
        return_samples: bool = False,
    ) -> np.ndarray:
        """Samples reduced to their mean and standard deviation as they are drawn (the engine's path).

        Same arguments and the same samples as :meth:`sample`, but memory does not grow with
        ``samples``: the samples of an input are folded into running float64 sums in sample order
        (so the result does not depend on the batch size), and dropped unless ``return_samples``.

        Returns
        -------
        (B, K, C, scale*h, scale*w) float32: plane 0 the mean, plane 1 the per-band sample standard
        deviation (ddof=1) times ``config.std_scale`` (0 when samples == 1), planes 2.. the samples
        when ``return_samples`` (K = 2 + samples), else K = 2. NaN under nodata LR pixels.
        """
        if samples == 0:
            raise InputError(f"samples=0 (the fast deterministic path) needs a model with a mean network "
                             f"(model v2, e.g. the default); {self.config.name!r} has none: use samples >= 1")
        run = self._run(lr, samples, steps, eta, seed, None, histogram_matching, True, None, batch_size, True)
        b, c, h, w = run.x.shape
        s = self.config.scale
        k_out = 2 + (samples if return_samples else 0)
        out = np.full((b, k_out, c, s * h, s * w), np.nan, dtype=np.float32)
        sums: dict[int, _Moments] = {}
        for ks, hr in self._generate(run):
            for k, value in zip(ks, hr):
                i, j = run.todo[k // samples], k % samples
                if return_samples:
                    out[i, 2 + j] = value
                acc = sums.setdefault(i, _Moments(value))
                acc.add(value)
                if j == samples - 1:
                    out[i, 0], out[i, 1] = sums.pop(i).result(self.config.std_scale)
        return out

    def _run(self, lr, samples, steps, eta, seed, temperature, histogram_matching, consistency,
             memory_budget_mb, batch_size, pad) -> _Run:
        """Check the arguments of :meth:`sample` and prepare the valid inputs for :meth:`_generate`."""
        x = torch.as_tensor(np.asarray(lr) if not isinstance(lr, torch.Tensor) else lr)
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
        if not isinstance(samples, int | np.integer) or not 1 <= samples <= MAX_SAMPLES:
            raise InputError(f"samples must be a positive integer <= {MAX_SAMPLES}, got {samples!r}")
        steps = cfg.sampler.steps if steps is None else steps
        if not isinstance(steps, int | np.integer) or not 1 <= steps <= cfg.schedule.timesteps:
            raise InputError(f"steps must be an integer in [1, {cfg.schedule.timesteps}], got {steps!r}")
        eta = cfg.sampler.eta if eta is None else float(eta)
        if eta < 0:
            raise InputError(f"eta must be >= 0, got {eta}")
        if batch_size is not None and (not isinstance(batch_size, int | np.integer) or batch_size < 1):
            raise InputError(f"batch_size must be a positive integer or None, got {batch_size!r}")
        temperature = cfg.sampler.temperature if temperature is None else float(temperature)
        b = x.shape[0]
        seeds = [int(seed)] * b if isinstance(seed, int | np.integer) else [int(v) for v in seed]
        if len(seeds) != b:
            raise InputError(f"seed must be an int or one int per input ({b}), got {len(seeds)}")
        x = x.to(torch.float32).cpu()
        invalid = ~torch.isfinite(x).all(dim=1)  # (B, h, w): nodata in any band
        todo = [i for i in range(b) if not bool(invalid[i].all())]
        factor = 2 ** (len(cfg.denoiser.channel_mult) - 1)
        ph = _padded_size(x.shape[-2], cfg.patch_size, factor)
        pw = _padded_size(x.shape[-1], cfg.patch_size, factor)
        cpu = self.device.type == "cpu"
        if batch_size is not None:
            size = int(batch_size)
        else:
            limit = self.batch_limit(ph, pw, memory_budget_mb)
            if cpu:  # one input's samples per call (padding a small block's calls to a larger batch
                # costs more than the UNet gains on a CPU), in whole latents per thread: a latent's
                # position then never decides how its work is split between threads
                threads = torch.get_num_threads()
                size = -(-min(samples, limit) // threads) * threads
            else:  # as many inputs' samples per call as fit: fills the GPU
                size = samples * max(1, limit // samples) if samples <= limit else limit
        # the decoder: on the CPU one latent per call (as fast per latent as larger batches, and the
        # padding of a call is never decoded); on a GPU the whole padded call
        decode = 1 if cpu else size
        sampler = DDIMSampler(self.schedule, int(steps), eta, temperature)
        return _Run(x, invalid, todo, [seeds[i] for i in todo], int(samples), sampler,
                    bool(histogram_matching), bool(consistency), size, decode, bool(pad), (ph, pw))

    def _generate(self, run: _Run) -> Iterator[tuple[range, np.ndarray]]:
        """Yield (item indices, HR samples (n, C, s*h, s*w) float32) for the latents k = i*S + j
        (valid input i, sample j), ``run.size`` of them per network call, in order."""
        self.prepare_inference()
        cfg, device = self.config, self.device
        x, invalid = run.x[run.todo], run.invalid[run.todo]
        b, c, h, w = x.shape
        if b == 0:
            return
        s, samples = cfg.scale, run.samples
        # nodata: fill with the band's valid mean so the networks see plausible values (per input)
        x_filled = torch.stack([_fill_nodata(x[i], invalid[i]) for i in range(b)])
        xn = self.normalize(_pad_to(x_filled, *run.padded))
        cond_mean, cond_std = self._conditions(xn, device)
        lr_nan = torch.where(invalid[:, None], torch.nan, x).numpy()
        hr_invalid = invalid.repeat_interleave(s, dim=1).repeat_interleave(s, dim=2).numpy()
        n = b * samples
        for start in range(0, n, run.size):
            ks = range(start, min(start + run.size, n))
            width = run.size if run.pad else len(ks)
            idx = [k // samples for k in ks] + [ks[-1] // samples] * (width - len(ks))
            gens = [item_generator(run.seeds[k // samples], k % samples) for k in ks]
            gens += [torch.Generator().manual_seed(0) for _ in range(width - len(ks))]
            mean = cond_mean[idx]
            if cfg.conditioning == "sample":
                noise = torch.stack([torch.randn(mean.shape[1:], generator=g) for g in gens])
                cond = mean + cond_std[idx] * _to_device(noise, device)
            else:
                cond = mean
            z = run.sampler.sample(lambda x_t, t, cond=cond: self.denoise(x_t, t, cond),
                                   tuple(mean.shape), gens, device, torch.float32)
            m, d = len(ks), run.decode_size
            decoded = torch.cat([self.decode(z[a : a + d]) for a in range(0, m, d)])[:m]
            decoded = _to_host(self.denormalize(decoded))[..., : s * h, : s * w]
            yield ks, self._finish(decoded, [k // samples for k in ks], run, x_filled, lr_nan, hr_invalid)

    def _conditions(self, xn: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder posterior (mean, std) of each normalised padded LR, one input per call (an input's
        condition never depends on the others)."""
        means, stds = [], []
        for i in range(xn.shape[0]):
            post = self.encode_condition(_to_device(xn[i : i + 1], device).contiguous(memory_format=torch.channels_last))
            means.append(post.mean.contiguous())
            stds.append(post.std.contiguous())
        return torch.cat(means), torch.cat(stds)

    def _finish(self, hr: np.ndarray, idx: list[int], run: _Run, x_filled: torch.Tensor,
                lr_nan: np.ndarray, hr_invalid: np.ndarray) -> np.ndarray:
        """Per sample: nodata -> NaN, histogram matching, the consistency step, clamp at 0."""
        hr = np.where(hr_invalid[idx][:, None], np.float32(np.nan), hr)
        if run.histogram_matching:
            for n, i in enumerate(idx):
                for band in range(hr.shape[1]):
                    hr[n, band] = match_histograms(hr[n, band], lr_nan[i, band])
        if run.consistency and self.config.consistency.active:
            inv = run.invalid[run.todo].numpy()
            lr = x_filled.numpy()
            hr = np.concatenate([self.apply_consistency(hr[n : n + 1, None], lr[i : i + 1], inv[i : i + 1])[:, 0]
                                 for n, i in enumerate(idx)])
        return np.maximum(hr, np.float32(0.0), out=hr)  # (NaN stays NaN)

    def apply_consistency(self, samples: np.ndarray, lr: np.ndarray, invalid: np.ndarray | None = None) -> np.ndarray:
        """The model's consistency step (``config.consistency``): :func:`consistency_step`."""
        return consistency_step(samples, lr, self.config.scale, self.config.consistency, invalid)

    def summarize(self, out: Any, std_scale: float | None = None) -> tuple[Any, Any]:
        """Samples (B, S, C, H, W) -> (mean, std), each (B, C, H, W).

        ``std`` is the per-band sample standard deviation (ddof=1) times ``std_scale`` (default
        ``config.std_scale``); zero where S == 1.
        """
        is_numpy = not isinstance(out, torch.Tensor)
        t = torch.as_tensor(out)
        mean = t.mean(dim=1)
        if t.shape[1] > 1:
            std = t.std(dim=1, correction=1) * (self.config.std_scale if std_scale is None else std_scale)
        else:
            std = torch.where(torch.isnan(mean), torch.nan, torch.zeros_like(mean))
        if is_numpy:
            return mean.numpy(), std.numpy()
        return mean, std

    def extra_repr(self) -> str:
        n = sum(p.numel() for p in self.parameters())
        return f"name={self.config.name!r}, version={self.config.version!r}, parameters={n:,}"


def consistency_step(samples: np.ndarray, lr: np.ndarray, scale: int, step: ConsistencyConfig,
                     invalid: np.ndarray | None = None) -> np.ndarray:
    """A model's consistency step ``step`` on samples (B, S, C, H, W) of the LR (B, C, h, w) at ``scale``;
    ``invalid`` (B, h, w) marks nodata LR pixels, whose HR pixels stay NaN (and ``lr`` must be finite
    elsewhere). Returns a new float32 array; ``samples`` unchanged when the step is off."""
    from ..sensor import bicubic_upsample
    from .consistency import enforce_consistency

    if not step.active:
        return samples
    lr = np.asarray(lr, dtype=np.float32)
    if invalid is None:
        invalid = ~np.isfinite(lr).all(axis=1)
    if invalid.any():  # nodata: a plain bicubic stands in for the NaN pixels during the step
        fill = np.nanmean(np.where(invalid[:, None], np.nan, lr), axis=(2, 3), keepdims=True)
        lr = np.where(invalid[:, None], fill, lr)
    hr_invalid = invalid.repeat(scale, axis=1).repeat(scale, axis=2)[:, None, None]
    stand_in = np.asarray(bicubic_upsample(lr, scale), dtype=np.float32)[:, None]
    out = enforce_consistency(np.where(hr_invalid, stand_in, samples), lr[:, None], scale, step)
    return np.where(hr_invalid, np.float32(np.nan), out).astype(np.float32)


def samples_with_moments(samples: np.ndarray, mean: np.ndarray, std: np.ndarray, *, axis: int = 0) -> np.ndarray:
    """Samples moved per pixel to a given mean and standard deviation, none of them negative.

    Parameters
    ----------
    samples : float array with S >= 2 samples along ``axis`` (reflectance); NaN = nodata.
    mean, std : the per-pixel targets, ``samples``' shape without ``axis``; ``mean >= 0``, ``std >= 0``.
    axis : the sample axis.

    Returns
    -------
    float32 array of ``samples``' shape, NaN where ``mean``, ``std`` or any sample is NaN. Per pixel:

    * the samples are standardised, ``z_j = (x_j - mean_j(x)) / std_j(x)`` (ddof=1; where they all
      agree, a fixed standardised ramp over the sample index stands in), and ``y_j = mean + std * z_j``;
    * where that would make a sample negative (reflectance is clipped at 0), the standardised values
      are floored at the lowest level ``c`` that keeps every sample >= 0 once re-standardised,
      ``y_j = mean + std * standardise(max(z, c))_j``: the sample order is kept, the lowest become equal;
    * ``S`` values >= 0 with mean ``m`` have a standard deviation of at most ``m * sqrt(S)`` (one value
      ``S * m``, the others 0). Where no floor does it (``std`` larger than that, e.g. ``mean == 0 <
      std``; or the two largest samples equal), the largest sample is ``mean + s * (S - 1) / sqrt(S)``
      and the others ``mean - s / sqrt(S)``, with ``s = min(std, mean * sqrt(S))``: for ``std >
      mean * sqrt(S)``, ``S * mean`` and 0.

    So everywhere: every sample >= 0, their mean is ``mean`` and their standard deviation (ddof=1)
    ``min(std, mean * sqrt(S))`` (to float32 rounding).
    """
    x = np.moveaxis(np.asarray(samples, dtype=np.float64), axis, 0)
    n = x.shape[0]
    if n < 2:
        raise ValueError(f"samples_with_moments needs >= 2 samples along axis {axis}, got {n}")
    shape = x.shape
    x = x.reshape(n, -1)
    m = np.asarray(mean, dtype=np.float64).reshape(-1)
    u = np.asarray(std, dtype=np.float64).reshape(-1)
    valid = np.isfinite(m) & np.isfinite(u) & np.isfinite(x).all(axis=0)
    x, m, u = np.where(valid, x, 0.0), np.where(valid, m, 0.0), np.where(valid, u, 0.0)
    z = _standardise(x)
    flat = z.min(axis=0) < -m / np.where(u > 0, u, 1.0)  # would go below 0 (where u > 0)
    flat &= u > 0
    if flat.any():
        z[:, flat], u[flat] = _floored(z[:, flat], m[flat], u[flat])
    y = np.maximum(m + u * z, 0.0)  # (the max only removes float rounding below 0)
    y = np.where(valid, y, np.nan).astype(np.float32)
    return np.moveaxis(y.reshape(shape), 0, axis)


def _standardise(x: np.ndarray, axis: int = 0) -> np.ndarray:
    """float64 ``x`` standardised along ``axis`` (mean 0, std (ddof=1) 1); where the values along
    ``axis`` agree (std <= 1e-9), a standardised ramp over the index along ``axis`` stands in."""
    n = x.shape[axis]
    dev = x - x.mean(axis=axis, keepdims=True)
    sd = x.std(axis=axis, ddof=1, keepdims=True)
    ramp = np.arange(n, dtype=np.float64) - (n - 1) / 2
    ramp = (ramp / ramp.std(ddof=1)).reshape([n if a == axis % x.ndim else 1 for a in range(x.ndim)])
    return np.where(sd > 1e-9, dev / np.where(sd > 1e-9, sd, 1.0), ramp)


def _floored(z: np.ndarray, m: np.ndarray, u: np.ndarray, iterations: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """:func:`samples_with_moments` where ``m + u * z`` has values < 0: standardised values z (S, N)
    whose lowest, re-standardised, is >= -m/u, and the std to use (``u``, or ``m * sqrt(S)`` where no
    such values exist)."""
    n = z.shape[0]
    target = -m / u

    def lowest(c: np.ndarray) -> np.ndarray:  # the lowest standardised value of max(z, c); -inf if (near) constant
        y = np.maximum(z, c)
        sd = y.std(axis=0, ddof=1)
        return np.where(sd > 1e-9, (c - y.mean(axis=0)) / np.where(sd > 1e-9, sd, 1.0), -np.inf)

    ordered = np.sort(z, axis=0)
    lo, hi = ordered[0], ordered[-2]  # floors at the second largest: all but the largest equal
    feasible = lowest(hi) >= target
    for _ in range(iterations):  # the lowest value rises with the floor: bisect, hi stays feasible
        mid = 0.5 * (lo + hi)
        ok = lowest(mid) >= target
        lo, hi = np.where(ok, lo, mid), np.where(ok, mid, hi)
    out = _standardise(np.maximum(z, hi))
    # no floor works (std > m * sqrt(S), or ties at the top): the extreme, S*m for the largest, 0 for the others
    extreme = np.full_like(z, -1.0 / math.sqrt(n))
    np.put_along_axis(extreme, np.argmax(z, axis=0)[None], (n - 1) / math.sqrt(n), axis=0)
    out = np.where(feasible, out, extreme)
    return out, np.where(feasible, u, np.minimum(u, m * math.sqrt(n)))


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


@dataclass
class _Run:
    """The checked arguments of one :meth:`SRModel.sample` call (valid inputs listed in ``todo``)."""

    x: torch.Tensor  # (B, C, h, w) float32 on the CPU, NaN = nodata
    invalid: torch.Tensor  # (B, h, w) bool
    todo: list[int]  # inputs with at least one valid pixel
    seeds: list[int]  # one per input in todo
    samples: int
    sampler: DDIMSampler
    histogram_matching: bool
    consistency: bool
    size: int  # latents per denoiser call (the DDIM loop)
    decode_size: int  # latents per decoder call (divides size)
    pad: bool  # pad the last call to ``size``
    padded: tuple[int, int]  # LR size the networks see


class _Moments:
    """Running float64 sums of one input's samples, added in sample order and shifted by the first
    sample (a stable variance); the result does not depend on how the samples were batched."""

    def __init__(self, first: np.ndarray) -> None:
        self.shift = first.astype(np.float64)
        self.n = 0
        self.s1 = np.zeros_like(self.shift)
        self.s2 = np.zeros_like(self.shift)

    def add(self, value: np.ndarray) -> None:
        d = value - self.shift
        self.s1 += d
        self.s2 += d * d
        self.n += 1

    def result(self, std_scale: float) -> tuple[np.ndarray, np.ndarray]:
        """(mean, std * std_scale) float32; std ddof=1, 0 for one sample (NaN stays NaN)."""
        mean = self.shift + self.s1 / self.n
        if self.n > 1:
            var = np.maximum(self.s2 - self.s1 * self.s1 / self.n, 0.0) / (self.n - 1)
            std = np.sqrt(var) * std_scale
        else:
            std = np.where(np.isnan(mean), np.nan, 0.0)
        return mean.astype(np.float32), std.astype(np.float32)


def _fill_nodata(x: torch.Tensor, invalid: torch.Tensor) -> torch.Tensor:
    """(C, h, w) with nodata pixels (``invalid`` (h, w)) set to the band's valid mean."""
    if not bool(invalid.any()):
        return x
    fill = torch.where(invalid[None], torch.nan, x).nanmean(dim=(1, 2), keepdim=True)
    return torch.where(invalid[None], fill.expand_as(x), x)


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host -> device; on a GPU through pinned memory with a non-blocking copy."""
    if device.type != "cuda":
        return t
    return t.pin_memory().to(device, non_blocking=True)


def _to_host(t: torch.Tensor) -> np.ndarray:
    """Device -> numpy float32 (C-contiguous); from a GPU into pinned memory, then one sync."""
    if t.device.type != "cuda":
        return t.float().contiguous().numpy()
    host = torch.empty(t.shape, dtype=torch.float32, pin_memory=True)
    host.copy_(t, non_blocking=True)
    torch.cuda.current_stream(t.device).synchronize()
    return host.numpy()
