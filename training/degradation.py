"""HR -> LR degradation of reflectance: Sentinel-2-like PSF, 4 x 4 area mean, optional noise (numpy).

The model learns to invert exactly this operator, so its parameters go into the training config
(``"degradation": {...}``) and the model card (:meth:`DegradationConfig.to_dict`).

Default PSF: a Gaussian of sigma 1.7 HR pixels (4.25 m at 2.5 m). The modulation transfer
function (MTF) of the whole operator (Gaussian x 4-pixel box) at the Nyquist frequency of the LR
grid is then ~0.27 (:meth:`DegradationConfig.mtf_at_nyquist`), inside the 0.2-0.3 measured for
the Sentinel-2 MSI 10 m bands (ESA S2 MPC data quality reports; specification 0.15-0.3).

The operator itself (PSF, area mean) is :func:`xr_opensr.sensor.degrade`, the one sensor model of
the package (also used by the consistency step and the synthetic cubes); this module adds its
config, the noise, the clipping and, on request, a sensor drawn per image: a PSF sigma and a noise
level from ranges and a sub-pixel misregistration (``training evaluate``'s unseen-domain set;
degradation randomisation for training). The defaults draw nothing: the same LR as before.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from xr_opensr import sensor
from xr_opensr._config import Config, Rules
from xr_opensr.sensor import PSF_SIGMA_HR, area_downsample

__all__ = ["DegradationConfig", "area_downsample", "degrade", "shift_image"]


@dataclass(frozen=True)
class DegradationConfig(Config):
    """Parameters of :func:`degrade`.

    Attributes
    ----------
    factor : integer scale between HR and LR pixels (4: 2.5 m -> 10 m).
    psf_sigma : standard deviation of the Gaussian PSF in HR pixels (0: no blur, area mean only).
    psf_truncate : the PSF kernel is cut at this many sigmas.
    noise_std : standard deviation of additive Gaussian noise on the LR, in reflectance (0: none;
        Sentinel-2 10 m bands have SNR > 100 at their reference radiance, i.e. ~0.001).
    clip_min : LR values are clipped from below to this (after noise); None: no clipping.
    psf_sigma_range : (low, high): draw the PSF sigma of each image uniformly in this range
        instead of using ``psf_sigma``; None: ``psf_sigma``.
    noise_std_range : (low, high): draw the noise level of each image in this range instead of
        ``noise_std``; None: ``noise_std``.
    shift_max : misregistration between HR and LR: the HR is moved by a shift drawn uniformly in
        [-shift_max, shift_max] HR pixels along each axis (bilinear, edges replicated) before the
        PSF; 0: none.

    ``from_dict`` / ``to_dict`` (the ``"degradation"`` section of a training config):
    :class:`xr_opensr._config.Config`, missing keys take the defaults.
    """

    WHERE, RULES = "degradation config", Rules(keys_name="degradation")

    factor: int = 4
    psf_sigma: float = PSF_SIGMA_HR
    psf_truncate: float = 4.0
    noise_std: float = 0.0
    clip_min: float | None = 0.0
    psf_sigma_range: tuple[float, float] | None = None
    noise_std_range: tuple[float, float] | None = None
    shift_max: float = 0.0

    def __post_init__(self) -> None:
        problems = []
        if int(self.factor) != self.factor or self.factor < 1:
            problems.append(f"factor must be a positive integer, got {self.factor!r}")
        if self.psf_sigma < 0 or self.noise_std < 0 or self.psf_truncate <= 0:
            problems.append(f"psf_sigma and noise_std must be >= 0 and psf_truncate > 0, got "
                            f"{self.psf_sigma}, {self.noise_std}, {self.psf_truncate}")
        for name in ("psf_sigma_range", "noise_std_range"):
            value = getattr(self, name)
            if value is not None and (len(value) != 2 or not 0 <= value[0] <= value[1]):
                problems.append(f"{name} must be None or [low, high] with 0 <= low <= high, got {value!r}")
        if not 0 <= self.shift_max < 4 * self.factor:
            problems.append(f"shift_max must be in [0, {4 * self.factor}) HR pixels, got {self.shift_max}")
        if problems:
            raise ValueError("invalid degradation config: " + "; ".join(problems))

    @property
    def randomised(self) -> bool:
        """Whether each image draws its own sensor (PSF sigma, noise level or shift)."""
        return self.psf_sigma_range is not None or self.noise_std_range is not None or self.shift_max > 0

    def mtf_at_nyquist(self) -> float:
        """MTF of PSF x area mean at the LR Nyquist frequency (1 / (2 factor) cycles per HR pixel)."""
        return sensor.mtf_at_nyquist(int(self.factor), self.psf_sigma, self.psf_truncate)


def shift_image(img: np.ndarray, dy: float, dx: float) -> np.ndarray:
    """``img`` (..., H, W) moved by (dy, dx) pixels: ``out[y, x] = img[y - dy, x - dx]``, bilinear
    between the four nearest pixels, edges replicated; float32."""
    arr = np.asarray(img, dtype=np.float32)
    h, w = arr.shape[-2:]
    pad = int(np.ceil(max(abs(dy), abs(dx)))) + 1
    padded = np.pad(arr, [(0, 0)] * (arr.ndim - 2) + [(pad, pad), (pad, pad)], mode="edge")
    iy, ix = int(np.floor(dy)), int(np.floor(dx))
    ty, tx = np.float32(dy - iy), np.float32(dx - ix)

    def take(oy: int, ox: int) -> np.ndarray:  # img[y - oy, x - ox]
        return padded[..., pad - oy:pad - oy + h, pad - ox:pad - ox + w]

    return ((1 - ty) * ((1 - tx) * take(iy, ix) + tx * take(iy, ix + 1))
            + ty * ((1 - tx) * take(iy + 1, ix) + tx * take(iy + 1, ix + 1))).astype(np.float32)


def degrade(hr: np.ndarray, config: DegradationConfig | None = None, *,
            seed: int | Sequence[int] | np.random.Generator = 0) -> np.ndarray:
    """Simulate the 10 m observation of a 2.5 m reflectance image: (shift), PSF, area mean, noise.

    Parameters
    ----------
    hr : array (..., C, factor * h, factor * w) reflectance (any float or integer dtype).
    config : the degradation (default :class:`DegradationConfig()`).
    seed : seed (or generator) of the noise and, for a randomised config, of the sensor drawn for
        this call (PSF sigma, then the shift, then the noise level; one draw for the whole array).
        The same seed gives the same LR.

    Returns
    -------
    numpy.ndarray (..., C, h, w) float32 reflectance. An LR pixel is NaN iff any HR pixel it covers
    is NaN; the PSF of valid pixels next to nodata is renormalised over valid pixels.
    """
    cfg = config if config is not None else DegradationConfig()
    arr = np.asarray(hr, dtype=np.float32)
    if arr.ndim < 2:
        raise ValueError(f"hr must have at least 2 dims (..., H, W), got shape {arr.shape}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    sigma, noise = cfg.psf_sigma, cfg.noise_std
    if cfg.psf_sigma_range is not None:
        sigma = float(rng.uniform(*cfg.psf_sigma_range))
    if cfg.shift_max > 0:
        arr = shift_image(arr, *rng.uniform(-cfg.shift_max, cfg.shift_max, 2))
    if cfg.noise_std_range is not None:
        noise = float(rng.uniform(*cfg.noise_std_range))
    lr = sensor.degrade(arr, int(cfg.factor), psf_sigma=sigma, truncate=cfg.psf_truncate)
    if noise > 0:
        lr = lr + rng.normal(0.0, noise, lr.shape).astype(np.float32)
    if cfg.clip_min is not None:
        lr = np.where(np.isnan(lr), lr, np.maximum(lr, np.float32(cfg.clip_min)))
    return lr.astype(np.float32, copy=False)
