"""Reflectance consistency: make a super-resolved image agree with its 10 m input.

One step of iterative back-projection: ``hr <- hr + bicubic(lr - degrade(hr))``, where ``degrade``
is the sensor model the network was trained with (a Gaussian PSF of ``psf_sigma`` HR pixels, then
the ``scale x scale`` area mean; or the area mean alone). It corrects the low frequencies of the
result (colour and brightness offsets of the networks) from the measured 10 m reflectance and keeps
the detail they added; the result degraded back to 10 m is closer to the input.
Pure numpy (:func:`xr_opensr.sensor.back_project`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..sensor import back_project, degrade

__all__ = ["ConsistencyConfig", "enforce_consistency"]

KERNELS = ("none", "area", "psf")


@dataclass(frozen=True)
class ConsistencyConfig:
    """Back-projection after sampling (``"consistency"`` in a model's config.json).

    Attributes
    ----------
    kernel : "none" (off: the raw network output), "area" (``scale x scale`` mean) or "psf"
        (Gaussian PSF, then the area mean).
    psf_sigma : standard deviation of the PSF in HR pixels (kernel "psf"); use the degradation the
        model was trained on.
    iterations : back-projection steps (each: degrade, residual to the LR, bicubic up, add).
    """

    kernel: str = "none"
    psf_sigma: float = 1.7
    iterations: int = 1

    def __post_init__(self) -> None:
        from ..errors import ModelError

        if self.kernel not in KERNELS:
            raise ModelError(f"consistency.kernel must be one of {KERNELS}, got {self.kernel!r}")
        if not self.psf_sigma > 0 or not isinstance(self.iterations, int) or self.iterations < 0:
            raise ModelError(f"consistency needs psf_sigma > 0 and an integer iterations >= 0, "
                             f"got {self.psf_sigma!r}, {self.iterations!r}")

    @property
    def active(self) -> bool:
        return self.kernel != "none" and self.iterations > 0

    def describe(self) -> str:
        """One line for output attributes and model cards, e.g. "1 back-projection step(s), kernel psf (...)"."""
        if not self.active:
            return "none"
        psf = f" (psf_sigma {self.psf_sigma} HR px)" if self.kernel == "psf" else ""
        return f"{self.iterations} back-projection step(s), kernel {self.kernel}{psf}"


def degrade_to_lr(hr: np.ndarray, scale: int, config: ConsistencyConfig) -> np.ndarray:
    """(..., H, W) -> (..., H/scale, W/scale): the sensor model of ``config`` (no noise)."""
    return np.asarray(degrade(hr, scale, psf_sigma=_sigma(config)), dtype=np.float32)


def enforce_consistency(hr: np.ndarray, lr: np.ndarray, scale: int, config: ConsistencyConfig) -> np.ndarray:
    """Back-project ``lr`` into ``hr``.

    Parameters
    ----------
    hr : (..., C, scale*h, scale*w) float32 reflectance (e.g. samples (B, S, C, H, W)); finite.
    lr : (..., C, h, w) float32 reflectance, broadcastable against ``hr``'s leading dims after the
        LR grid (e.g. (B, 1, C, h, w) for samples); finite.
    scale : HR pixels per LR pixel.

    Returns
    -------
    float32 array shaped like ``hr`` (unchanged when the config is off).
    """
    if not config.active:
        return hr
    return back_project(hr, lr, scale, config.iterations, psf_sigma=_sigma(config))


def _sigma(config: ConsistencyConfig) -> float:
    return config.psf_sigma if config.kernel == "psf" else 0.0
