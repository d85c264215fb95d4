"""The 20 m-band model: B05, B06, B07, B8A, B11, B12 to 10 m and on to 2.5 m, guided by the 10 m bands.

Two steps, as ESA's SEN2SR, each with a hard low-frequency constraint against its own input:

1. :meth:`GuidedSR.sharpen` (20 m -> 10 m). A least-squares guided estimate (:func:`ls_detail_transfer`:
   per image and band, the 20 m band fitted on the four 10 m bands brought to 20 m; the fitted
   combination's high-pass at 10 m added to the bicubic upsampling) is the base; a small CNN
   (:class:`GuidedNet`: input = bicubic upsampling, the base and the guide; output = a residual on the
   base) refines it, and an uncertainty head (Laplace scale, trained on detached features so the
   mean's L1 loss is untouched; scaled by a factor per band fitted on validation crops) gives the
   standard deviation. Then back-projection against the 20 m input with the sensor model of
   :mod:`xr_opensr.sensor` at factor 2 (:func:`sensor_sigma`).
2. :meth:`GuidedSR.superresolve` (10 m -> 2.5 m). The same least-squares detail transfer with the
   super-resolved 10 m bands as the guide: each sharpened band is fitted on the four native 10 m bands
   at 10 m, the high-pass of the fitted combination of the super-resolved bands at 2.5 m is added to
   the bicubic upsampling, then back-projection against the sharpened band (factor 4). No learning;
   the standard deviation is propagated: ``sqrt(bicubic(std_1)^2 + sum_k w_k^2 std_10m,k^2)``.

Every array is numpy float32 reflectance; NaN marks nodata (a pixel is NaN in every output band when
any guide band or any target band covering it is NaN). Each image is processed on its own, so a
result never depends on its batch mates.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import sensor
from .._config import Rules, check_fields, register_rules
from ..errors import CheckpointError, ConfigError, InputError, ModelError
from ..sensor import bicubic_upsample, bicubic_upsample_torch, degrade, degrade_torch, sensor_sigma
from ..sentinel2 import GUIDED_BANDS, MODEL_BANDS
from .base import ModelInfo
from .config import JsonConfig, load_config, read_config_json
from .io import load_network

__all__ = [
    "BANDS",
    "FORMAT",
    "GUIDE_BANDS",
    "GuidedConfig",
    "GuidedNet",
    "GuidedSR",
    "load_guided",
    "ls_detail_transfer",
    "save_guided",
    "seeded_guided",
    "sensor_sigma",
]

#: the bands the model super-resolves (native 20 m), in its channel order
BANDS: tuple[str, ...] = GUIDED_BANDS
#: the guide bands (native 10 m), in its channel order
GUIDE_BANDS: tuple[str, ...] = MODEL_BANDS
#: ``format`` of a guided model's config.json (tells it from the diffusion models' configs)
FORMAT = "xr-opensr-guided"
#: the registry's kind of a guided 20 m model (``config.json`` ``"kind"``, :mod:`~xr_opensr.models.registry`)
KIND = "guided-20m"
FORMAT_VERSION = 1
CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"
#: ridge term of the least-squares fits, relative to the guide's variance
_RIDGE = 1e-6


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class GuidedConfig(JsonConfig):
    """A guided model's ``config.json``.

    Attributes
    ----------
    name, version : the model's name and version.
    channels, blocks : width and residual blocks of the CNN (:class:`GuidedNet`).
    uncertainty_channels : width of the uncertainty head.
    norm_offset, norm_scale : the CNN sees ``(reflectance - offset) / scale`` (one value for all).
    consistency_iterations : back-projection steps against the input (each: degrade, residual, bicubic, add).
    std_scale : per-band factor on the predicted standard deviation (fitted on validation crops).
    provenance : where the weights come from (training command, data, measured figures).
    """

    name: str = "s2-20m"
    version: str = "1.0.0"
    bands: tuple[str, ...] = BANDS
    guide_bands: tuple[str, ...] = GUIDE_BANDS
    channels: int = 32
    blocks: int = 4
    uncertainty_channels: int = 16
    norm_offset: float = 0.15
    norm_scale: float = 0.1
    consistency_iterations: int = 5
    std_scale: tuple[float, ...] = (1.0,) * 6
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        problems = []
        if tuple(self.bands) != BANDS or tuple(self.guide_bands) != GUIDE_BANDS:
            problems.append(f"bands must be {list(BANDS)} and guide_bands {list(GUIDE_BANDS)}")
        if len(self.std_scale) != len(BANDS):
            problems.append(f"std_scale must hold {len(BANDS)} numbers (one per band), got {self.std_scale!r}")
        problems += check_fields(self, "field")  # what load_config checks, for direct construction
        if problems:
            raise ConfigError("invalid guided model config: " + "; ".join(problems))

    def replace(self, **changes: Any) -> GuidedConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": KIND, "format": FORMAT, "format_version": FORMAT_VERSION, **super().to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "config") -> GuidedConfig:
        """Inverse of :meth:`to_dict`, checked by the one config loader (:func:`load_config`): a wrong
        format, a newer version, unknown or missing keys (only ``name``, ``version`` and ``provenance``
        may be left out), wrong types and values out of bounds raise ConfigError naming the key."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"{source} must be a JSON object, got {type(data).__name__}; write the model "
                              "with xr_opensr.models.guided.save_guided")
        data = dict(data)
        fmt, version, kind = data.pop("format", None), data.pop("format_version", None), data.pop("kind", KIND)
        if kind != KIND:
            raise ConfigError(f"{source} has kind {kind!r}, not a guided model ({KIND!r}); load it with "
                              "xr_opensr.load_model")
        if fmt != FORMAT:
            raise ConfigError(f"{source} is not a guided model config (format {fmt!r}, expected {FORMAT!r}); "
                              "diffusion models load with xr_opensr.load_model")
        if not isinstance(version, int) or isinstance(version, bool) or version > FORMAT_VERSION:
            raise ConfigError(f"{source} has format_version {version!r}; this xr-opensr reads up to "
                              f"{FORMAT_VERSION}: upgrade xr-opensr")
        return load_config(cls, data, source)  # keys, types (lists -> tuples), bounds, then __post_init__

    @classmethod
    def from_json(cls, path: str | Path) -> GuidedConfig:
        """The config in ``path`` (a model folder's ``config.json``), read as every model config is
        (:func:`~xr_opensr.models.config.read_config_json`) and checked by :meth:`from_dict`."""
        path = Path(path)
        data = read_config_json(path, "20 m model config", "write the model with xr_opensr.models.guided.save_guided")
        return cls.from_dict(data, source=f"20 m model config {path}")


#: what :func:`load_config` checks beyond the annotations (and ``__post_init__`` on direct construction):
#: sizes that no 20 m model outgrows; the normalisation and the std factors in ranges where float32
#: arithmetic cannot overflow (reflectance lies in [-0.1, 2])
register_rules(GuidedConfig, Rules(
    optional=frozenset({"name", "version", "provenance"}),
    bounds={"channels": (1, 512), "blocks": (0, 64), "uncertainty_channels": (1, 512),
            "consistency_iterations": (0, 512), "norm_offset": (-10, 10), "norm_scale": (1e-4, 100),
            "std_scale": (1e-6, 1e6)},
))


# --------------------------------------------------------------------------- network


class _Block(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(ch, ch, 3, padding=1, padding_mode="replicate")
        self.conv2 = nn.Conv2d(ch, ch, 3, padding=1, padding_mode="replicate")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(torch.relu(self.conv1(x)))


class GuidedNet(nn.Module):
    """Residual CNN on normalised inputs: (bicubic (6), LS base (6), guide (4)) -> (residual (6), log b (6)).

    The residual is added to the LS base; ``log b`` (Laplace scale, normalised units) comes from a head
    on the detached features and the detached mean, so its loss leaves the mean's training untouched.
    The last layer of the mean starts at zero: an untrained net returns the LS base.
    """

    def __init__(self, config: GuidedConfig) -> None:
        super().__init__()
        nb, ng, ch, uc = len(config.bands), len(config.guide_bands), config.channels, config.uncertainty_channels
        self.head = nn.Conv2d(2 * nb + ng, ch, 3, padding=1, padding_mode="replicate")
        self.body = nn.Sequential(*[_Block(ch) for _ in range(config.blocks)])
        self.tail = nn.Conv2d(ch, nb, 3, padding=1, padding_mode="replicate")
        nn.init.zeros_(self.tail.weight)
        nn.init.zeros_(self.tail.bias)
        self.unc = nn.Sequential(
            nn.Conv2d(ch + 2 * nb, uc, 3, padding=1, padding_mode="replicate"), nn.ReLU(),
            nn.Conv2d(uc, nb, 3, padding=1, padding_mode="replicate"),
        )

    def forward(self, bicubic: torch.Tensor, base: torch.Tensor, guide: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([bicubic, base, guide], dim=1)
        feat = self.head(x)
        feat = feat + self.body(torch.relu(feat))
        mean = base + self.tail(torch.relu(feat))
        detail = (mean - bicubic).detach()
        log_b = self.unc(torch.cat([feat.detach(), detail, (base - bicubic).detach()], dim=1))
        return mean, log_b.clamp(-12.0, 6.0)


# --------------------------------------------------------------------------- least squares


def ls_detail_transfer(guide: np.ndarray, target: np.ndarray, factor: int, *,
                       guide_coarse: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The least-squares guided estimate (no learning): per image and band, fit ``target`` on the guide
    bands at the coarse scale, then add the fitted combination's high-pass at the fine scale to the
    bicubic upsampling of ``target``.

    Parameters
    ----------
    guide : (N, K, factor*h, factor*w) float reflectance at the fine grid.
    target : (N, C, h, w) float reflectance at the coarse grid.
    factor : fine pixels per coarse pixel.
    guide_coarse : (N, K, h, w) the guide at the coarse grid (default: ``degrade(guide)`` with the
        sensor model at ``factor``, :func:`sensor_sigma`).

    Returns
    -------
    (estimate (N, C, factor*h, factor*w) float32, weights (N, C, K) float64). The fit uses the pixels
    where every band is finite (weights 0, i.e. bicubic, with fewer than 2 K of them); NaN propagates
    as in :func:`~xr_opensr.sensor.bicubic_upsample` and the fine guide.
    """
    guide = np.asarray(guide, dtype=np.float32)
    target = np.asarray(target, dtype=np.float32)
    weights = _ls_weights(_degrade(guide, factor) if guide_coarse is None else guide_coarse, target)
    fitted = _combine(weights, guide)
    detail = fitted - _bicubic(_degrade(fitted, factor), factor)
    return (_bicubic(target, factor) + detail).astype(np.float32), weights


def _ls_weights(guide_coarse: np.ndarray, target: np.ndarray) -> np.ndarray:
    """(N, C, K) float64: per image, the ridge least-squares weights of ``target`` (N, C, h, w) on
    ``guide_coarse`` (N, K, h, w) after removing the means, over the pixels where every band is finite
    (0 with fewer than 2 K of them). All images at once; each image's products and solve are its own."""
    n, k = guide_coarse.shape[:2]
    x = np.asarray(guide_coarse, dtype=np.float64).reshape(n, k, -1)
    y = np.asarray(target, dtype=np.float64).reshape(n, target.shape[1], -1)
    ok = (np.isfinite(x).all(axis=1) & np.isfinite(y).all(axis=1))[:, None]  # (N, 1, P)
    count = np.maximum(ok.sum(axis=-1, keepdims=True), 1)
    with np.errstate(invalid="ignore"):  # non-finite pixels are left out by ``ok``
        xc = np.where(ok, x - np.where(ok, x, 0.0).sum(axis=-1, keepdims=True) / count, 0.0)
        yc = np.where(ok, y - np.where(ok, y, 0.0).sum(axis=-1, keepdims=True) / count, 0.0)
    gram = xc @ xc.transpose(0, 2, 1)
    eye = np.eye(k)
    gram += _RIDGE * np.trace(gram, axis1=1, axis2=2)[:, None, None] / k * eye + 1e-12 * eye
    weights = np.linalg.solve(gram, xc @ yc.transpose(0, 2, 1)).transpose(0, 2, 1)
    weights[ok.sum(axis=(1, 2)) < 2 * k] = 0.0
    return weights


def _combine(weights: np.ndarray, guide: np.ndarray) -> np.ndarray:
    """(N, C, H, W) float32: per image, the bands of ``guide`` (N, K, H, W) combined with ``weights`` (N, C, K)."""
    n, k, h, w = guide.shape
    out = torch.matmul(torch.from_numpy(weights.astype(np.float32)), _tensor(guide).reshape(n, k, h * w))
    return out.reshape(n, -1, h, w).numpy()


def back_project(fine: np.ndarray, coarse: np.ndarray, factor: int, iterations: int) -> np.ndarray:
    """``iterations`` back-projection steps (:func:`~xr_opensr.sensor.back_project`) with the sensor model
    at ``factor`` (:func:`sensor_sigma`). Finite input runs the same map on the coarse grid
    (:func:`~xr_opensr.sensor.back_project_torch`: one degrade and one bicubic on the fine grid whatever
    ``iterations``, the same values up to float32 rounding); input with NaN goes step by step."""
    return _finite_by_torch(sensor.back_project, sensor.back_project_torch, (fine, coarse), factor, iterations,
                            psf_sigma=sensor_sigma(factor))


def back_project_torch(fine: torch.Tensor, coarse: torch.Tensor, iterations: int) -> torch.Tensor:
    """:func:`back_project` at factor 2 for training (:func:`~xr_opensr.sensor.back_project_torch`)."""
    return sensor.back_project_torch(fine, coarse, 2, iterations, psf_sigma=sensor_sigma(2))


def _degrade(x: np.ndarray, factor: int) -> np.ndarray:
    """:func:`~xr_opensr.sensor.degrade` with the sensor model at ``factor`` (:func:`_finite_by_torch`)."""
    return _finite_by_torch(degrade, degrade_torch, (x,), factor, psf_sigma=sensor_sigma(factor))


def _bicubic(x: np.ndarray, factor: int) -> np.ndarray:
    """:func:`~xr_opensr.sensor.bicubic_upsample` by ``factor`` (:func:`_finite_by_torch`)."""
    return _finite_by_torch(bicubic_upsample, bicubic_upsample_torch, (x,), factor)


def _finite_by_torch(numpy_fn: Any, torch_fn: Any, arrays: tuple, *args: Any, **kwargs: Any) -> np.ndarray:
    """``numpy_fn(*arrays, *args, **kwargs)`` of float32 arrays; finite ones by ``torch_fn``, its twin in
    :mod:`xr_opensr.sensor` as matrix products on torch's CPU threads (the kernel's ``torch_threads``;
    an image's result does not depend on its batch mates)."""
    arrays = tuple(np.asarray(a, dtype=np.float32) for a in arrays)
    if all(np.isfinite(a).all() for a in arrays):
        return torch_fn(*map(_tensor, arrays), *args, **kwargs).numpy()
    return numpy_fn(*arrays, *args, **kwargs)


def _tensor(a: np.ndarray) -> torch.Tensor:
    """A float32 CPU tensor of ``a``, sharing its memory where it is float32, C-contiguous and writable
    (a view with negative strides, e.g. ``x[..., ::-1, :]``, is copied)."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    return torch.from_numpy(a if a.flags.writeable else a.copy())


# --------------------------------------------------------------------------- the model


class GuidedSR:
    """The 20 m-band model: :meth:`sharpen` (20 m -> 10 m) and :meth:`superresolve` (-> 2.5 m).

    Runs on the CPU or a torch device; deterministic; each image on its own (batch-invariant).

    Not a super-resolution model of its own: it needs the 10 m bands' super-resolution as input, so it
    has no ``run`` (not a :class:`~xr_opensr.models.base.Model`); :class:`~xr_opensr.models.chain.Chain`
    runs it after a 10 m model, reading :attr:`info` (name, version, bands) and :attr:`guide_bands`.
    """

    def __init__(self, config: GuidedConfig, net: GuidedNet | None = None, device: str | torch.device = "cpu",
                 *, source: str | Path | None = None) -> None:
        self.config = config
        self.device = torch.device(device)
        self.net = (net or GuidedNet(config)).to(self.device).eval()
        #: the folder the model was loaded from (None: built in memory), for the messages
        self.source = None if source is None else Path(source)

    @property
    def bands(self) -> tuple[str, ...]:
        return tuple(self.config.bands)

    @property
    def guide_bands(self) -> tuple[str, ...]:
        return tuple(self.config.guide_bands)

    @property
    def info(self) -> ModelInfo:
        """What the model declares: input bands the guide then the 20 m bands (the order a chain's
        patches hold them), output bands the 20 m bands, 4x the 10 m grid, mean and std only."""
        return ModelInfo(
            name=self.config.name, version=self.config.version, bands=(*self.guide_bands, *self.bands),
            bands_out=self.bands, scale=4, patch_multiple=2, halo=None, outputs=("mean", "std"),
            mean_without_samples=True,
            consistency=f"back-projection against the 20 m input ({self.config.consistency_iterations} steps)",
        )

    def place(self, device: str | torch.device = "cpu", dtype: Any = None) -> GuidedSR:
        """Move to ``device`` ("auto": CUDA if visible, else CPU; the model computes in float32 whatever
        ``dtype``); returns the model."""
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.net = self.net.to(self.device)
        return self

    def __repr__(self) -> str:
        n = sum(p.numel() for p in self.net.parameters())
        return f"GuidedSR(name={self.config.name!r}, version={self.config.version!r}, parameters={n})"

    # ------------------------------------------------------------------ step 1

    def inputs(self, guide: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(bicubic, LS base, filled guide) of finite images: the network's inputs (also for training).

        NaN in ``guide``/``target`` are replaced by the band's mean over the image (0 if none) first.
        """
        guide, target = _fill(guide), _fill(target)
        base, _ = ls_detail_transfer(guide, target, 2)
        return _bicubic(target, 2), base, guide

    def sharpen(self, guide: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """20 m -> 10 m with the native 10 m bands as guide.

        Parameters
        ----------
        guide : (N, 4, 2h, 2w) float reflectance of :attr:`guide_bands` at the fine grid.
        target : (N, 6, h, w) float reflectance of :attr:`bands` at the coarse grid.

        Returns
        -------
        (mean, std), each (N, 6, 2h, 2w) float32: the CNN's estimate after the consistency step
        against ``target``, and its calibrated standard deviation. NaN where any guide band or any
        target band (at the covering coarse pixel) is NaN.
        """
        guide, target = _check_pair(guide, target, 2, len(self.guide_bands), len(self.bands), "sharpen")
        invalid = _invalid(guide, target, 2)
        bic, base, filled = self.inputs(guide, target)  # image by image inside: no dependence on batch mates
        parts = [self._network(bic[i:i + 1], base[i:i + 1], filled[i:i + 1]) for i in range(len(bic))]
        mean = np.concatenate([m for m, _ in parts])
        std = np.concatenate([s for _, s in parts])
        mean = back_project(mean, _fill(target), 2, self.config.consistency_iterations)
        np.copyto(mean, np.float32(np.nan), where=invalid[:, None])
        np.copyto(std, np.float32(np.nan), where=invalid[:, None])
        return mean, std

    @torch.no_grad()
    def _network(self, bic: np.ndarray, base: np.ndarray, guide: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        off, sc = self.config.norm_offset, self.config.norm_scale

        def tensor(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy((a - off) / sc).to(self.device, torch.float32)

        mean, log_b = self.net(tensor(bic), tensor(base), tensor(guide))
        scale = torch.tensor(self.config.std_scale, dtype=torch.float32, device=self.device)[None, :, None, None]
        std = np.sqrt(2.0) * torch.exp(log_b) * sc * scale  # Laplace: std = sqrt(2) b
        mean, std = (mean * sc + off).float().cpu().numpy(), std.float().cpu().numpy()
        if not (np.isfinite(mean).all() and np.isfinite(std).all()) and all(np.isfinite(a).all() for a in (bic, base, guide)):
            where = self.source if self.source is not None else "built in memory"
            raise ModelError(
                f"20 m model {self.config.name!r} ({where}) returned NaN or infinite values from finite input: its "
                f"weights or its normalisation (norm_offset {off!r}, norm_scale {sc!r}) make the network overflow; "
                "re-export or retrain it (python -m training guided), or use model20='s2-20m'"
            )
        return mean, std

    # ------------------------------------------------------------------ step 2

    def superresolve(self, lr10: np.ndarray, target20: np.ndarray, sr10_mean: np.ndarray,
                     sr10_std: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """The 20 m bands to 2.5 m.

        Parameters
        ----------
        lr10 : (N, 4, h, w) native 10 m bands (:attr:`guide_bands`), h and w even.
        target20 : (N, 6, h/2, w/2) native 20 m bands (:attr:`bands`).
        sr10_mean, sr10_std : (N, 4, 4h, 4w) the 10 m bands super-resolved to 2.5 m and their std;
            ``sr10_std`` None: no uncertainty (the fast path): the std is not computed, all NaN.

        Returns
        -------
        (mean, std), each (N, 6, 4h, 4w) float32. NaN where the inputs are NaN.
        """
        lr10, target20 = _check_pair(lr10, target20, 2, len(self.guide_bands), len(self.bands), "superresolve")
        sr10_mean, _ = _check_pair(sr10_mean, lr10, 4, len(self.guide_bands), len(self.guide_bands),
                                   "superresolve (sr10_mean vs lr10)")
        if sr10_std is not None:
            sr10_std = np.asarray(sr10_std, dtype=np.float32)
        if sr10_std is not None and sr10_std.shape != sr10_mean.shape:
            raise InputError(f"superresolve: sr10_std has shape {sr10_std.shape}, expected that of sr10_mean "
                             f"{sr10_mean.shape}")
        mean10, std10 = self.sharpen(lr10, target20)
        invalid = _invalid(sr10_mean, mean10, 4)
        if sr10_std is not None:
            invalid |= np.isnan(sr10_std).any(axis=1)
        m10 = _fill(mean10)  # every step below works image by image: no dependence on batch mates
        w = _ls_weights(_fill(lr10), m10)
        fitted = _combine(w, _fill(sr10_mean))
        # ls_detail_transfer's estimate is one back-projection step from the fitted combination
        # (bicubic(m10) + fitted - bicubic(degrade(fitted))), so the estimate then the consistency
        # steps are consistency_iterations + 1 steps from ``fitted`` (finite input: the same map).
        mean = back_project(fitted, m10, 4, self.config.consistency_iterations + 1)
        np.copyto(mean, np.float32(np.nan), where=invalid[:, None])
        if sr10_std is None:
            return mean, np.full_like(mean, np.nan)
        var = np.square(np.maximum(_bicubic(_fill(std10), 4), 0.0))
        var += _combine(w ** 2, np.square(_fill(sr10_std)))
        std = np.sqrt(var)
        np.copyto(std, np.float32(np.nan), where=invalid[:, None])
        return mean, std


def _check_pair(fine: Any, coarse: Any, factor: int, n_fine: int, n_coarse: int, where: str
                ) -> tuple[np.ndarray, np.ndarray]:
    fine, coarse = np.asarray(fine, dtype=np.float32), np.asarray(coarse, dtype=np.float32)
    if fine.ndim != 4 or fine.shape[1] != n_fine or coarse.ndim != 4 or coarse.shape[1] != n_coarse:
        raise InputError(f"{where}: expected arrays (N, {n_fine}, H, W) and (N, {n_coarse}, H/{factor}, W/{factor}), "
                         f"got {fine.shape} and {coarse.shape}")
    h, w = fine.shape[-2:]
    if h % factor or w % factor or h == 0 or w == 0:
        raise InputError(f"{where}: the fine grid of {h} x {w} pixels is not a positive multiple of {factor}; "
                         f"crop or pad it to a multiple of {factor} (e.g. [..., :{h - h % factor}, :{w - w % factor}])")
    if coarse.shape[0] != fine.shape[0] or coarse.shape[-2:] != (h // factor, w // factor):
        raise InputError(f"{where}: the coarse array {coarse.shape} does not fit the fine array {fine.shape} "
                         f"(expected (N, {n_coarse}, {h // factor}, {w // factor}))")
    return fine, coarse


def _invalid(fine: np.ndarray, coarse: np.ndarray, factor: int) -> np.ndarray:
    """(N, H, W): fine pixels with any NaN band, or under a coarse pixel with any NaN band."""
    bad = np.isnan(coarse).any(axis=1)
    return np.isnan(fine).any(axis=1) | np.repeat(np.repeat(bad, factor, axis=-2), factor, axis=-1)


def _fill(a: np.ndarray) -> np.ndarray:
    """NaN -> the band's mean over the image (0 for an all-NaN band); float32."""
    a = np.asarray(a, dtype=np.float32)
    nan = np.isnan(a)
    if not nan.any():
        return a
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN bands
        fill = np.nan_to_num(np.nanmean(a, axis=(-2, -1), keepdims=True))
    return np.where(nan, fill, a).astype(np.float32)


# --------------------------------------------------------------------------- files


def seeded_guided(seed: int = 0, device: str | torch.device = "cpu", **changes: Any) -> GuidedSR:
    """An untrained model with reproducible random weights (the zero-initialised last layer filled too):
    for tests only, its output is not meaningful."""
    config = GuidedConfig(**{"provenance": {"source": "seeded random weights (not trained): for tests only"},
                             **changes})
    gen = torch.Generator().manual_seed(seed)
    net = GuidedNet(config)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return GuidedSR(config, net.to(memory_format=torch.channels_last), device)


def _folder(name_or_path: str | Path) -> Path:
    path = Path(name_or_path)
    if path.is_dir():
        return path
    from importlib import resources

    shipped = Path(str(resources.files("xr_opensr") / "weights")) / str(name_or_path)
    if (shipped / CONFIG_FILE).is_file():
        return shipped
    raise InputError(f"no guided model {str(name_or_path)!r}: give 's2-20m' (the shipped model) or a folder "
                     f"holding {CONFIG_FILE} and {WEIGHTS_FILE}")


def load_guided(name_or_path: str | Path = "s2-20m", device: str | torch.device = "cpu") -> GuidedSR:
    """Load a guided model: ``"s2-20m"`` (shipped in ``xr_opensr/weights/s2-20m``) or a folder.

    The one loading path of every model (:func:`~xr_opensr.models.io.load_network`): the config is
    checked by the one config loader, the tensor shapes in the safetensors header are compared with
    the network built on torch's meta device (nothing allocated), then the weights are read
    strictly (every tensor of the config's network, no other) and must be finite. The caller caches
    the result (one load per process).
    """
    folder = _folder(name_or_path)
    cfg_path, weights = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    config = GuidedConfig.from_json(cfg_path)
    if not weights.is_file():
        raise CheckpointError(f"weights file missing: {weights} (a guided model folder needs {WEIGHTS_FILE})")
    net = load_network(lambda: GuidedNet(config), {weights: ""}, model=config.name, config_path=cfg_path)
    # channels-last weights: the convolutions of one image run ~15 % faster on the CPU (same values
    # up to float32 rounding); a network being trained keeps torch's default layout
    return GuidedSR(config, net.to(memory_format=torch.channels_last), device, source=folder)


def save_guided(model: GuidedSR, folder: str | Path, *, card: str | None = None) -> Path:
    """Write ``config.json`` + ``model.safetensors`` (+ ``MODEL_CARD.md``) into ``folder``."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous().float() for k, v in model.net.state_dict().items()}
    save_file(state, str(folder / WEIGHTS_FILE), metadata={"format": FORMAT, "name": model.config.name})
    model.config.to_json(folder / CONFIG_FILE)
    if card is not None:
        (folder / "MODEL_CARD.md").write_text(card)
    return folder
