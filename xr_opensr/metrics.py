"""Quality metrics for super-resolved Sentinel-2 reflectance: numpy first, xarray too.

Every function takes numpy arrays laid out ``(..., band, y, x)`` (reflectance, float) or
:class:`xarray.DataArray` objects with a ``band`` dimension (optional) and spatial dims ``y``/``x``.

* numpy: the statistic pools every leading axis (e.g. a batch ``(N, 4, H, W)``) and returns a
  Python ``float``; with ``per_band=True`` an array ``(band,)``.
* xarray: the band and spatial dims are reduced, every other dim (``time``, ...) is kept; the
  result is a DataArray (0-d if nothing is kept), with ``band`` kept if ``per_band=True``.

NaN marks nodata: a pixel that is NaN in either input is ignored. Nothing here imports torch,
except :func:`lpips`, which imports it (and ``lpips`` / ``stlpips-pytorch``) when called.

Also here, from their own modules: :func:`opensr_test_metrics` (ESA's opensr-test family:
reflectance, spectral and spatial consistency, synthesis, hallucination / omission / improvement;
``xr_opensr._opensrtest``), the LPIPS networks (``xr_opensr._lpips``) and the resampling between
the 10 m and 2.5 m grids (:mod:`xr_opensr.sensor`).

Conventions: reflectance in [0, 1] (``data_range=1.0``); PSNR in dB from the MSE pooled over all
valid values; SSIM after Wang et al. (2004) with an 11-tap Gaussian window (sigma 1.5 px, K1 0.01,
K2 0.03, borders of 5 px excluded, as ``skimage.metrics.structural_similarity(gaussian_weights=True)``);
spectral angle (SAM) in degrees.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr

from ._layout import ArrayLike, _apply, _band_dim, _float_array, _quiet, _spatial_dims, angle_map
from ._lpips import LPIPS_BANDS, LPIPS_NETS, _resolve_lpips_net, _shared_lpips_model, lpips_network
from ._opensrtest import OPENSR_TEST_METRICS, opensr_test_metrics
from .sensor import _gauss1d, _separable, area_downsample, bicubic_upsample, gaussian_filter

__all__ = [
    "LPIPS_BANDS",
    "LPIPS_NETS",
    "OPENSR_TEST_METRICS",
    "area_downsample",
    "bicubic_upsample",
    "gaussian_filter",
    "gradient_magnitude",
    "lpips",
    "lpips_network",
    "opensr_test_metrics",
    "psnr",
    "reflectance_consistency",
    "spectral_angle",
    "ssim",
    "uncertainty_calibration",
]


# --------------------------------------------------------------------------- uncertainty baseline


def gradient_magnitude(img: ArrayLike) -> ArrayLike:
    """Per-band gradient magnitude ``sqrt(d/dy^2 + d/dx^2)`` (central differences, per pixel).

    The trivial uncertainty baseline: errors of an upsampled image concentrate at edges. NaN
    spreads to the (up to 4) neighbours used by the differences.

    Parameters
    ----------
    img : array (..., H, W) with H, W >= 2, or a DataArray with spatial dims.

    Returns
    -------
    same shape (and coords), reflectance per pixel.
    """
    if isinstance(img, xr.DataArray):
        y, x = _spatial_dims(img)
        moved = img.transpose(..., y, x)
        return moved.copy(data=gradient_magnitude(moved.values)).transpose(*img.dims)
    arr = _float_array(img)
    if min(arr.shape[-2:]) < 2:
        raise ValueError(f"gradient_magnitude needs at least 2 x 2 pixels, got {arr.shape[-2:]}")
    gy, gx = np.gradient(arr, axis=(-2, -1))
    return np.hypot(gy, gx).astype(arr.dtype, copy=False)


# --------------------------------------------------------------------------- fidelity


def psnr(pred: ArrayLike, target: ArrayLike, data_range: float = 1.0, *, per_band: bool = False):
    """Peak signal-to-noise ratio in dB: ``10 log10(data_range^2 / MSE)``, MSE over valid pixels.

    Identical inputs give ``inf``; no valid pixel gives NaN.

    Parameters
    ----------
    pred, target : arrays (..., band, y, x) or (y, x) of reflectance, or DataArrays (see module).
    data_range : the peak value (1.0 for reflectance).
    per_band : one value per band instead of one for all.
    """

    def kernel(p: np.ndarray, t: np.ndarray) -> np.ndarray:
        mse = np.nanmean((p - t) ** 2, axis=(1, 3, 4) if per_band else (1, 2, 3, 4))
        return 10.0 * np.log10(data_range**2 / mse)

    with _quiet():
        return _apply(kernel, pred, target, per_band=per_band, name="psnr", units="dB")


def ssim(pred: ArrayLike, target: ArrayLike, data_range: float = 1.0, *, per_band: bool = False,
         sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03):
    """Structural similarity (Wang et al. 2004), Gaussian window, computed per band and averaged.

    Local statistics use an 11-tap Gaussian (``sigma`` 1.5 px, truncated at 3.5 sigma) with
    population (co)variances; the SSIM map is averaged over valid pixels at least 5 px from the
    border (images of 11 px or less keep their border). NaN pixels are excluded from the local
    means (normalised convolution) and from the average.

    Parameters
    ----------
    pred, target : arrays (..., band, y, x) or (y, x) of reflectance, or DataArrays (see module).
    data_range : the dynamic range (1.0 for reflectance).
    per_band : one value per band instead of their mean.

    Returns
    -------
    float in [-1, 1] (1 for identical inputs), array (band,), or DataArray.
    """
    truncate = 3.5
    radius = int(truncate * sigma + 0.5)
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2

    def kernel(p: np.ndarray, t: np.ndarray) -> np.ndarray:
        mask = np.isfinite(p) & np.isfinite(t)
        p, t = np.where(mask, p, 0.0), np.where(mask, t, 0.0)
        kern = _gauss1d(sigma, truncate)
        w = _separable(mask.astype(np.float64), kern)
        mx = _separable(p, kern) / w
        my = _separable(t, kern) / w
        sxx = _separable(p * p, kern) / w - mx * mx
        syy = _separable(t * t, kern) / w - my * my
        sxy = _separable(p * t, kern) / w - mx * my
        smap = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
        h, wd = p.shape[-2:]
        if h > 2 * radius and wd > 2 * radius:
            smap, mask = smap[..., radius:-radius, radius:-radius], mask[..., radius:-radius, radius:-radius]
        bands = np.nanmean(np.where(mask, smap, np.nan), axis=(1, 3, 4))
        # mean of the per-band means: bands weigh the same even if their valid areas differ
        return bands if per_band else np.nanmean(bands, axis=1)

    with _quiet():
        return _apply(kernel, pred, target, per_band=per_band, name="ssim", units="1")


def spectral_angle(pred: ArrayLike, target: ArrayLike):
    """Mean spectral angle (SAM) in degrees between the band vectors of each pixel.

    The angle is ``2 atan2(|u - v|, |u + v|)`` of the unit spectra u, v (accurate near 0). Pixels
    with a NaN band in either input or an all-zero spectrum are ignored. Scaling a spectrum leaves
    its angle unchanged (SAM is blind to brightness).

    Parameters
    ----------
    pred, target : arrays (..., band, y, x) with >= 2 bands, or DataArrays with a band dim.

    Returns
    -------
    float in [0, 180] degrees (DataArray for DataArray input).
    """

    def kernel(p: np.ndarray, t: np.ndarray) -> np.ndarray:
        if p.shape[2] < 2:
            raise ValueError(f"spectral_angle needs at least 2 bands, got {p.shape[2]}")
        return np.nanmean(angle_map(p, t, axis=2), axis=(1, 2, 3))

    with _quiet():
        return _apply(kernel, pred, target, per_band=False, name="spectral_angle", units="degree",
                      need_band=True)


def reflectance_consistency(sr: ArrayLike, lr: ArrayLike, factor: int = 4, data_range: float = 1.0, *,
                            per_band: bool = False):
    """PSNR (dB) of the SR image brought back to the LR grid (``factor x factor`` area mean) vs the LR.

    A super-resolution that keeps the 10 m reflectance scores high (``inf`` when exact, e.g. for a
    nearest-neighbour upsampling of ``lr``).

    Parameters
    ----------
    sr : array (..., band, factor * h, factor * w) reflectance, or a DataArray.
    lr : array (..., band, h, w) reflectance, or a DataArray.
    """
    down = area_downsample(sr, factor)
    if isinstance(down, xr.DataArray) and isinstance(lr, xr.DataArray):
        y, x = _spatial_dims(down)
        ly, lx = _spatial_dims(lr)
        lr = lr.rename({ly: y, lx: x}) if (ly, lx) != (y, x) else lr
        down = down.drop_vars([y, x], errors="ignore")
        lr = lr.drop_vars([y, x], errors="ignore")
    return psnr(down, lr, data_range, per_band=per_band)


# --------------------------------------------------------------------------- uncertainty


def uncertainty_calibration(std: ArrayLike, error: ArrayLike, *, k: float = 2.0,
                            max_samples: int | None = 1_000_000, seed: int = 0) -> dict[str, float]:
    """How well a per-pixel standard deviation predicts the actual error.

    Parameters
    ----------
    std : array of predicted standard deviations (reflectance), any shape.
    error : array of the same shape: ``prediction - truth`` (its absolute value is used).
    k : coverage is the fraction of pixels with ``|error| <= k * std``.
    max_samples : Spearman's rho on at most this many pixels, drawn with ``seed`` (None: all).

    Returns
    -------
    dict with ``spearman`` (rank correlation of std and |error|, ties averaged; NaN if either is
    constant), ``coverage_{k}std`` (``coverage_2std`` for k=2; a well-calibrated Gaussian gives
    about 0.95), ``n`` (valid pixels), ``mean_std`` and ``mean_abs_error``.
    """
    s = np.asarray(getattr(std, "values", std), dtype=np.float64)
    e = np.abs(np.asarray(getattr(error, "values", error), dtype=np.float64))
    if s.shape != e.shape:
        raise ValueError(f"std {s.shape} and error {e.shape} must have the same shape")
    ok = np.isfinite(s) & np.isfinite(e)
    s, e = s[ok], e[ok]
    key = f"coverage_{k:g}std"
    if s.size == 0:
        return {"spearman": float("nan"), key: float("nan"), "n": 0, "mean_std": float("nan"),
                "mean_abs_error": float("nan")}
    coverage = float(np.mean(e <= k * s))
    if max_samples is not None and s.size > max_samples:
        pick = np.random.default_rng(seed).choice(s.size, max_samples, replace=False)
        s_r, e_r = s[pick], e[pick]
    else:
        s_r, e_r = s, e
    return {"spearman": _spearman(s_r, e_r), key: coverage, "n": int(s.size),
            "mean_std": float(s.mean()), "mean_abs_error": float(e.mean())}


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    if a.size < 2:
        return float("nan")
    ra, rb = _rankdata(a), _rankdata(b)
    ra -= ra.mean()
    rb -= rb.mean()
    den = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    return float((ra * rb).sum() / den) if den > 0 else float("nan")


def _rankdata(a: np.ndarray) -> np.ndarray:
    """1-based ranks, ties get their average rank (``scipy.stats.rankdata(method="average")``)."""
    _, inverse, counts = np.unique(a, return_inverse=True, return_counts=True)
    average = np.cumsum(counts) - (counts - 1) / 2.0
    return average[inverse.reshape(-1)].astype(np.float64)


# --------------------------------------------------------------------------- perceptual


def lpips(pred: ArrayLike, target: ArrayLike, net: str = "auto", *, reflectance_max: float = 0.4,
          bands: Sequence[int] | None = None, device: str = "cpu", batch_size: int = 16,
          return_info: bool = False):
    """Learned perceptual distance (LPIPS) of the RGB bands; lower is closer. Optional dependency.

    The networks are ImageNet RGB models, so only B04, B03, B02 (red, green, blue) are compared.
    Reflectance is stretched linearly to the network's [-1, 1]: ``2 * r / reflectance_max - 1``,
    clipped, i.e. 0 -> -1 and ``reflectance_max`` (default 0.4, brighter saturates) -> +1. Pixels
    that are NaN in either input are set to reflectance 0 in both.

    Nothing is ever downloaded. ``net``:

    * ``"lpips-alex"`` / ``"lpips-vgg"``: LPIPS v0.1 (``lpips`` package, its shipped linear
      layers) on the torchvision ImageNet trunk, which must already be in
      ``$TORCH_HOME/hub/checkpoints`` (``alexnet-owt-7be5be79.pth`` / ``vgg16-397923af.pth``).
    * ``"stlpips-alex"`` / ``"stlpips-vgg"``: shift-tolerant LPIPS, whose complete weights ship
      inside ``stlpips-pytorch`` (values are not comparable with LPIPS ones).
    * ``"auto"``: ``"lpips-alex"`` if its trunk is cached, else ``"stlpips-alex"``.

    Parameters
    ----------
    pred, target : arrays (..., band, H, W) reflectance with H, W >= 32, or DataArrays with a band
        dim (bands picked by label B04, B03, B02).
    bands : indices of the R, G, B bands for numpy input (default: the first three, i.e. the
        model band order B04, B03, B02, B08).
    device : torch device for the network.
    return_info : also return a dict naming the net, stretch and bands used (record it with the
        number: LPIPS values depend on the net).

    Returns
    -------
    float (mean distance over all images), or ``(float, info)``.
    """
    name = _resolve_lpips_net(net)
    p, t, labels = _rgb(pred, bands), _rgb(target, bands), None
    if isinstance(pred, xr.DataArray):
        labels = list(LPIPS_BANDS)
    if p.shape != t.shape:
        raise ValueError(f"pred {p.shape} and target {t.shape} must have the same shape")
    if min(p.shape[-2:]) < 32:
        raise ValueError(f"LPIPS needs images of at least 32 x 32 pixels, got {p.shape[-2:]}")
    import torch

    model = _shared_lpips_model(name, str(device))
    p = p.reshape(-1, 3, *p.shape[-2:])
    t = t.reshape(-1, 3, *t.shape[-2:])
    bad = ~(np.isfinite(p) & np.isfinite(t)).all(axis=1, keepdims=True)
    p, t = np.where(bad, 0.0, p), np.where(bad, 0.0, t)
    scores = []
    with torch.no_grad():
        for a in range(0, p.shape[0], batch_size):
            x = torch.from_numpy(_stretch(p[a : a + batch_size], reflectance_max)).to(device)
            y = torch.from_numpy(_stretch(t[a : a + batch_size], reflectance_max)).to(device)
            scores.append(model(x, y).flatten(1).mean(1).double().cpu().numpy())
    value = float(np.concatenate(scores).mean())
    if not return_info:
        return value
    info = {"net": name, "description": LPIPS_NETS[name], "reflectance_max": reflectance_max,
            "stretch": f"2 * clip(reflectance / {reflectance_max}, 0, 1) - 1",
            "bands": labels or list(bands if bands is not None else (0, 1, 2)), "images": int(p.shape[0])}
    return value, info


def _stretch(x: np.ndarray, reflectance_max: float) -> np.ndarray:
    return (2.0 * np.clip(x / reflectance_max, 0.0, 1.0) - 1.0).astype(np.float32)


def _rgb(obj: ArrayLike, bands: Sequence[int] | None) -> np.ndarray:
    if isinstance(obj, xr.DataArray):
        band_dim = _band_dim(obj)
        y, x = _spatial_dims(obj)
        if band_dim is None:
            raise ValueError("lpips needs a band dim with labels B04, B03, B02 on a DataArray")
        labels = [str(v).upper() for v in obj[band_dim].values]
        missing = [b for b in LPIPS_BANDS if b not in labels]
        if missing:
            raise ValueError(f"lpips needs bands {list(LPIPS_BANDS)}; {missing} not in {band_dim}={labels}")
        sel = obj.isel({band_dim: [labels.index(b) for b in LPIPS_BANDS]})
        return sel.transpose(..., band_dim, y, x).values.astype(np.float64)
    arr = np.asarray(obj, dtype=np.float64)
    if arr.ndim < 3:
        raise ValueError(f"lpips needs (..., band, H, W) arrays, got shape {arr.shape}")
    idx = list(bands) if bands is not None else [0, 1, 2]
    if len(idx) != 3:
        raise ValueError(f"bands must name 3 band indices (R, G, B), got {bands}")
    return np.take(arr, idx, axis=-3)
