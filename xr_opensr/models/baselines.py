"""Baseline models that run through the same pipeline as the diffusion models: bicubic upsampling.

``load_model("bicubic")`` and ``load_model("bicubic+consistency")`` (and ``superresolve(...,
model="bicubic")``, ``xr-opensr superresolve --model bicubic``) give a model of the model interface
(:class:`~xr_opensr.models.base.Model`), so a baseline goes through the same patch grid, blending,
output layout and writers as a real model:

- ``"bicubic"``: Keys' cubic convolution (a = -0.5) of each patch, :func:`xr_opensr.sensor.
  bicubic_upsample` (the bicubic of the metrics and ``training evaluate``);
- ``"bicubic+consistency"``: then the consistency step of the shipped default model
  (:class:`~xr_opensr.models.consistency.ConsistencyConfig`, back-projection of the LR), the
  "bicubic+consistency" column of ``training evaluate``.

Every sample is the same image, so ``uncertainty`` is 0 (NaN under nodata). The samples are free:
a baseline costs one numpy upsampling per patch, which is what the benchmarks use to measure the
dask layer's own cost.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..errors import InputError
from ..sentinel2 import MODEL_BANDS
from .base import ModelInfo
from .consistency import ConsistencyConfig
from .pipeline import MAX_SAMPLES, SummaryRun, consistency_step

__all__ = ["BASELINES", "DEFAULT_CONSISTENCY", "BaselineModel", "load_baseline"]

#: names of the baseline models (not folders: they have no weights)
BASELINES = ("bicubic", "bicubic+consistency")


#: the documented consistency step of the shipped default model; ``load_model("bicubic+consistency")``
#: passes the step read from the default model's config.json (:mod:`~xr_opensr.models.io`)
DEFAULT_CONSISTENCY = ConsistencyConfig(kernel="psf", psf_sigma=1.7, iterations=1)


class BaselineModel(SummaryRun):
    """Bicubic upsampling (optionally + a consistency step) behind the model interface.

    Runs in numpy on the CPU whatever device is asked for; deterministic (seeds are ignored).
    ``consistency`` is the step of ``"bicubic+consistency"`` (None: :data:`DEFAULT_CONSISTENCY`;
    ``load_model`` passes the shipped default model's); ``"bicubic"`` has none.
    """

    def __init__(self, name: str, consistency: ConsistencyConfig | None = None) -> None:
        if name not in BASELINES:
            raise InputError(f"unknown baseline {name!r}; use one of {BASELINES}")
        if name == "bicubic":
            consistency = ConsistencyConfig()
        elif consistency is None:
            consistency = DEFAULT_CONSISTENCY
        self.consistency = consistency
        #: the four 10 m bands, 4x, patches of 32 LR px; ``samples=0`` gives the upsampled image
        self.info = ModelInfo(name=name, version="1.0.0", bands=MODEL_BANDS, scale=4, patch=32, overlap=8,
                              sampling=None, mean_without_samples=True, consistency=consistency.describe())

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def __repr__(self) -> str:
        return f"BaselineModel(name={self.info.name!r}, consistency={self.info.consistency!r})"

    def place(self, device: Any = "auto", dtype: Any = None) -> BaselineModel:
        """Nothing to move: a baseline always runs in numpy on the CPU. Returns self."""
        return self

    def upsample(self, lr: np.ndarray) -> np.ndarray:
        """(B, C, h, w) reflectance (NaN = nodata) -> (B, C, s*h, s*w) float32, NaN under nodata LR pixels
        (a pixel is nodata when any band is, as in :meth:`SRModel.sample`)."""
        from ..sensor import bicubic_upsample

        lr = np.asarray(lr, dtype=np.float32)
        s = self.info.scale
        invalid = ~np.isfinite(lr).all(axis=1)
        lr = np.where(invalid[:, None], np.float32(np.nan), lr)
        hr = np.asarray(bicubic_upsample(lr, s), dtype=np.float32)
        if self.consistency.active and not invalid.all():
            hr = consistency_step(hr[:, None], lr, s, self.consistency, invalid)[:, 0]
        return hr

    def sample_summary(self, lr: Any, samples: int = 1, steps: int | None = None, eta: float | None = None,
                       seed: Any = 0, *, return_samples: bool = False, **_: Any) -> np.ndarray:
        """(B, K, C, s*h, s*w): the upsampled image, uncertainty 0 (NaN under nodata; NaN for
        ``samples=0``), and the ``samples`` copies when ``return_samples`` -- the layout of
        :meth:`SRModel.sample_summary`."""
        x = np.asarray(lr)
        _check(x, samples, len(self.info.bands))
        hr = self.upsample(x)
        out = np.empty((hr.shape[0], 2 + (samples if return_samples else 0), *hr.shape[1:]), dtype=np.float32)
        out[:, 0] = hr
        out[:, 1] = 0.0 if samples else np.nan  # samples=0 (the deterministic path): no uncertainty
        np.copyto(out[:, 1], np.float32(np.nan), where=np.isnan(hr))  # NaN under nodata
        out[:, 2:] = hr[:, None]
        return out


def _check(x: np.ndarray, samples: Any, bands: int) -> None:
    if x.ndim != 4 or x.shape[1] != bands:
        raise InputError(f"lr must have shape (B, {bands}, h, w), got {x.shape}")
    if not isinstance(samples, int | np.integer) or not 0 <= samples <= MAX_SAMPLES:
        raise InputError(f"samples must be an integer in [0, {MAX_SAMPLES}], got {samples!r}")


def load_baseline(name: str, consistency: ConsistencyConfig | None = None) -> BaselineModel:
    """The baseline model ``name`` (one of :data:`BASELINES`); ``consistency``: the step of
    ``"bicubic+consistency"`` (None: :data:`DEFAULT_CONSISTENCY`; :func:`~xr_opensr.models.load_model`
    passes the shipped default model's)."""
    return BaselineModel(name, consistency)
