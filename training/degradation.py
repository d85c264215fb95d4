"""HR -> LR degradation of reflectance: Sentinel-2-like PSF, 4 x 4 area mean, optional noise (numpy).

The model learns to invert exactly this operator, so its parameters go into the training config
(``"degradation": {...}``) and the model card (:meth:`DegradationConfig.to_dict`).

Default PSF: a Gaussian of sigma 1.7 HR pixels (4.25 m at 2.5 m). The modulation transfer
function (MTF) of the whole operator (Gaussian x 4-pixel box) at the Nyquist frequency of the LR
grid is then ~0.27 (:meth:`DegradationConfig.mtf_at_nyquist`), inside the 0.2-0.3 measured for
the Sentinel-2 MSI 10 m bands (ESA S2 MPC data quality reports; specification 0.15-0.3).

The operator itself (PSF, area mean) is :func:`xr_opensr.sensor.degrade`, the one sensor model of
the package (also used by the consistency step and the synthetic cubes); this module adds its
config, the noise and the clipping.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from xr_opensr import sensor
from xr_opensr.sensor import PSF_SIGMA_HR, area_downsample, gaussian_filter

__all__ = ["DegradationConfig", "area_downsample", "degrade", "psf_blur"]


@dataclass(frozen=True)
class DegradationConfig:
    """Parameters of :func:`degrade`.

    Attributes
    ----------
    factor : integer scale between HR and LR pixels (4: 2.5 m -> 10 m).
    psf_sigma : standard deviation of the Gaussian PSF in HR pixels (0: no blur, area mean only).
    psf_truncate : the PSF kernel is cut at this many sigmas.
    noise_std : standard deviation of additive Gaussian noise on the LR, in reflectance (0: none;
        Sentinel-2 10 m bands have SNR > 100 at their reference radiance, i.e. ~0.001).
    clip_min : LR values are clipped from below to this (after noise); None: no clipping.
    """

    factor: int = 4
    psf_sigma: float = PSF_SIGMA_HR
    psf_truncate: float = 4.0
    noise_std: float = 0.0
    clip_min: float | None = 0.0

    def __post_init__(self) -> None:
        problems = []
        if int(self.factor) != self.factor or self.factor < 1:
            problems.append(f"factor must be a positive integer, got {self.factor!r}")
        if self.psf_sigma < 0 or self.noise_std < 0 or self.psf_truncate <= 0:
            problems.append(f"psf_sigma and noise_std must be >= 0 and psf_truncate > 0, got "
                            f"{self.psf_sigma}, {self.noise_std}, {self.psf_truncate}")
        if problems:
            raise ValueError("invalid degradation config: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (the ``"degradation"`` section of a training config)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DegradationConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError``, missing keys take defaults."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown degradation keys {unknown}; expected a subset of {sorted(known)}")
        return cls(**dict(data))

    def mtf_at_nyquist(self) -> float:
        """MTF of PSF x area mean at the LR Nyquist frequency (1 / (2 factor) cycles per HR pixel)."""
        return sensor.mtf_at_nyquist(int(self.factor), self.psf_sigma, self.psf_truncate)


def psf_blur(hr: np.ndarray, sigma: float, *, truncate: float = 4.0) -> np.ndarray:
    """Gaussian PSF over the last two axes (mirrored edges); NaN pixels are left out and stay NaN."""
    return gaussian_filter(hr, sigma, truncate=truncate)


def degrade(hr: np.ndarray, config: DegradationConfig | None = None, *,
            seed: int | Sequence[int] | np.random.Generator = 0) -> np.ndarray:
    """Simulate the 10 m observation of a 2.5 m reflectance image: PSF, area mean, noise.

    Parameters
    ----------
    hr : array (..., C, factor * h, factor * w) reflectance (any float or integer dtype).
    config : the degradation (default :class:`DegradationConfig()`).
    seed : seed (or generator) of the noise; only used when ``config.noise_std > 0``. The same
        seed gives the same LR.

    Returns
    -------
    numpy.ndarray (..., C, h, w) float32 reflectance. An LR pixel is NaN iff any HR pixel it covers
    is NaN; the PSF of valid pixels next to nodata is renormalised over valid pixels.
    """
    cfg = config if config is not None else DegradationConfig()
    arr = np.asarray(hr, dtype=np.float32)
    if arr.ndim < 2:
        raise ValueError(f"hr must have at least 2 dims (..., H, W), got shape {arr.shape}")
    h, w = arr.shape[-2:]
    if h % cfg.factor or w % cfg.factor:
        raise ValueError(f"hr of {h} x {w} pixels is not a multiple of factor {cfg.factor}")
    lr = sensor.degrade(arr, int(cfg.factor), psf_sigma=cfg.psf_sigma, truncate=cfg.psf_truncate).astype(np.float32)
    if cfg.noise_std > 0:
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        lr = lr + rng.normal(0.0, cfg.noise_std, lr.shape).astype(np.float32)
    if cfg.clip_min is not None:
        lr = np.where(np.isnan(lr), lr, np.maximum(lr, np.float32(cfg.clip_min)))
    return lr.astype(np.float32, copy=False)
