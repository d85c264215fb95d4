"""The opensr-test metric family (ESA's SR benchmark), xarray-native and NaN-aware.

The definitions are those of the ``opensr-test`` package (1.3.3, its defaults: ND distance for
correctness, pixel aggregation), for one image ``(band, H, W)``, its LR ``(band, h, w)`` and the HR
reference, scale ``s = H / h``:

1. Borders: ``border`` HR pixels (``border / s`` LR pixels) are cut from every side.
2. Grids: LR -> HR grid by bilinear interpolation ("LR up"); SR -> LR grid by antialiased bilinear
   ("SR down"): a triangle filter ``s`` pixels wide on each side. Both use half-pixel centres and
   renormalise the weights at the edges (``torch.nn.functional.interpolate(mode="bilinear",
   antialias=True)``).
3. Consistency, SR down vs LR: ``reflectance`` is the mean over pixels of the band-mean absolute
   difference; ``spectral`` the mean angle between the pixels' spectra (degrees); ``spatial`` the
   length (LR pixels) of the translation between the RGB means of LR and SR down found by phase
   correlation to 1/50 pixel (Guizar-Sicairos et al. 2008), NaN if longer than 5 pixels.
4. Harmonised SR: the SR's histograms matched to the HR's band by band, then translated (bilinear,
   edges replicated) by the phase-correlation shift between the band means of the two (not moved if
   the shift is longer than 5 pixels). Skip either step with ``harmonize`` / ``align``.
5. ``synthesis``: mean band-mean absolute difference of LR up and the harmonised SR.
6. Correctness: the normalised difference ``ND(a, b) = mean_band |a - b| / |a + b + 1e-8|`` gives
   per pixel ``d_ref = ND(LR up, HR)``, ``d_im = ND(SR, HR)`` and ``d_om = ND(SR, LR up)`` (SR
   harmonised). Pixels where none of the three exceeds the threshold (by default the 75th
   percentile of ``d_ref``: the k-th smallest value, ``k = int(0.75 n)``) are left out. With
   ``x = d_im / d_ref``, ``y = d_om / d_ref``, ``H = x + y - 1`` and ``lambda = 0.05``:
   improvement ``x + y (1 - exp(-lambda H))``, omission ``y + x (1 - exp(-lambda H))``,
   hallucination ``exp(-lambda x y)``. A softmin over the three (temperature 0.25) turns them into
   memberships that sum to 1; ``improvement``, ``omission`` and ``hallucination`` are their means.

NaN marks nodata. An LR pixel counts where all its bands and all SR pixels of its block are valid;
an HR pixel where SR, HR and its LR pixel are valid in every band. Resampling, the shift and the
histogram matching weigh valid values only; phase correlation sees NaN as the image's mean. On
finite input every number equals opensr-test's (``tests/test_metrics_opensr.py`` checks it).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np
import xarray as xr

from ._layout import ArrayLike, _band_dim, _quiet, _spatial_dims, angle_map
from ._lpips import LPIPS_BANDS as _RGB_BANDS
from .errors import BandError, InputError

__all__ = ["OPENSR_TEST_METRICS", "opensr_test_metrics"]

#: the metrics :func:`opensr_test_metrics` returns and their units (arrows: which way is better)
OPENSR_TEST_METRICS = {
    "reflectance": "reflectance (lower is better)",
    "spectral": "degree (lower is better)",
    "spatial": "LR pixel (lower is better)",
    "synthesis": "reflectance (higher adds more detail)",
    "hallucination": "fraction of pixels (lower is better)",
    "omission": "fraction of pixels (lower is better)",
    "improvement": "fraction of pixels (higher is better)",
}
_CONSISTENCY = ("reflectance", "spectral", "spatial")
_QUANTILE = 0.75  # of d_ref: the default threshold of the correctness mask
_LAMBDA = 0.05  # opensr-test's im_score = om_score = ha_score
_MAX_SHIFT = 5.0  # LR or HR pixels: longer shifts are taken as failed registrations
_UPSAMPLE = 50  # phase correlation resolves 1/50 pixel
_ND_EPS = 1e-8


def opensr_test_metrics(sr: ArrayLike, lr: ArrayLike, hr: ArrayLike | None = None, *, border: int = 16,
                        harmonize: bool = True, align: bool = True, threshold: float | None = None,
                        temperature: float = 0.25, rgb: Sequence[int] | None = None):
    """The opensr-test metrics of a super-resolved image against its LR input and an HR reference.

    See the module docstring for the definitions; defaults are opensr-test 1.3.3's.

    Parameters
    ----------
    sr : array (..., band, H, W) reflectance, or a DataArray with a band dim and spatial dims.
    lr : array (..., band, h, w) with ``H = s h`` and ``W = s w`` for an integer scale ``s``; a
        DataArray with the same non-spatial dims as ``sr``.
    hr : the reference, laid out as ``sr``; without it only the consistency metrics are computed.
    border : HR pixels cut from every side before anything is measured (a multiple of ``s``).
    harmonize, align : match the SR's histograms to the HR's / translate the SR onto the HR before
        the synthesis and correctness metrics.
    threshold : the ND distance below which a pixel is left out of the correctness metrics (None:
        the 75th percentile of ``d_ref`` of each image).
    temperature : of the softmin that turns the three distances into memberships.
    rgb : indices of the R, G, B bands for numpy input (default the first three: the model band
        order B04, B03, B02, B08); DataArrays use the labels B04, B03, B02 if present.

    Returns
    -------
    dict of floats (numpy input: each image is measured on its own, the results are averaged over
    the leading axes ignoring NaN), or an :class:`xarray.Dataset` with one variable per metric over
    the non-spatial, non-band dims. Keys: ``reflectance``, ``spectral``, ``spatial`` and, with
    ``hr``, ``synthesis``, ``hallucination``, ``omission``, ``improvement`` (see
    :data:`OPENSR_TEST_METRICS`). NaN where an image has no valid pixel.
    """
    if temperature <= 0:
        raise InputError(f"temperature must be > 0, got {temperature}; opensr-test uses 0.25")
    options = {"border": int(border), "harmonize": bool(harmonize), "align": bool(align),
               "threshold": threshold, "temperature": float(temperature)}
    if any(isinstance(a, xr.DataArray) for a in (sr, lr, hr)):
        return _xarray_metrics(sr, lr, hr, options)
    s, lo = np.asarray(sr, np.float64), np.asarray(lr, np.float64)
    h = None if hr is None else np.asarray(hr, np.float64)
    _check_shapes(s.shape, lo.shape, None if h is None else h.shape)
    n = s.shape[-3]
    idx = list(rgb) if rgb is not None else _default_rgb(n)
    if rgb is not None and (len(idx) != 3 or not all(-n <= i < n for i in idx)):
        raise BandError(f"rgb must name 3 band indices of the {n} bands (R, G, B), got {rgb}")
    rows = _per_image(s, lo, h, idx, options)
    with _quiet():
        return {key: float(np.nanmean([r[key] for r in rows])) for key in rows[0]}


def _per_image(sr, lr, hr, rgb, options) -> list[dict[str, float]]:
    s = sr.reshape(-1, *sr.shape[-3:])
    lo = lr.reshape(-1, *lr.shape[-3:])
    h = None if hr is None else hr.reshape(-1, *hr.shape[-3:])
    return [_image_metrics(s[i], lo[i], None if h is None else h[i], rgb, **options)
            for i in range(s.shape[0])]


def _default_rgb(bands: int) -> list[int]:
    return [0, 1, 2] if bands >= 3 else [0]  # fewer than 3 bands: the first one alone


def _check_shapes(sr: tuple, lr: tuple, hr: tuple | None) -> None:
    if len(sr) < 3 or len(lr) != len(sr):
        raise InputError(f"sr and lr must be arrays (..., band, y, x) with the same leading axes, got "
                         f"sr {sr} and lr {lr}")
    if hr is not None and hr != sr:
        raise InputError(f"hr {hr} must have the shape of sr {sr}")
    if sr[:-2] != lr[:-2]:
        raise InputError(f"sr {sr} and lr {lr} differ outside their spatial axes (bands, leading axes)")
    ratio = (sr[-2] / lr[-2], sr[-1] / lr[-1]) if min(lr[-2:]) > 0 else (0.5, 0.5)
    if ratio[0] != ratio[1] or not ratio[0].is_integer() or ratio[0] < 1:
        raise InputError(f"sr {sr[-2:]} must be an integer multiple (the same along y and x) of lr "
                         f"{lr[-2:]}; crop both to matching extents first")


def _xarray_metrics(sr, lr, hr, options) -> xr.Dataset:
    if not isinstance(sr, xr.DataArray) or not isinstance(lr, xr.DataArray) or not (
            hr is None or isinstance(hr, xr.DataArray)):
        raise TypeError("opensr_test_metrics: give DataArrays (sr, lr and hr) or numpy arrays, not a mix")
    band = _band_dim(sr)
    if band is None or _band_dim(lr) != band:
        raise BandError(f"sr and lr need the same band dim (one of band, bands, channel, ...); got sr "
                        f"dims {sr.dims} and lr dims {lr.dims}")
    y, x = _spatial_dims(sr)
    ly, lx = _spatial_dims(lr)
    keep = [d for d in sr.dims if d not in (band, y, x)]
    if set(lr.dims) - {ly, lx} != set(keep) | {band} or (hr is not None and set(hr.dims) != set(sr.dims)):
        raise InputError(f"sr {dict(sr.sizes)}, lr {dict(lr.sizes)} and hr "
                         f"{None if hr is None else dict(hr.sizes)} must share their non-spatial dims")
    s = sr.transpose(*keep, band, y, x).values.astype(np.float64)
    lo = lr.transpose(*keep, band, ly, lx).values.astype(np.float64)
    h = None if hr is None else hr.transpose(*keep, band, y, x).values.astype(np.float64)
    _check_shapes(s.shape, lo.shape, None if h is None else h.shape)
    labels = [str(v).upper() for v in sr[band].values] if band in sr.coords else []
    rgb = ([labels.index(b) for b in _RGB_BANDS] if all(b in labels for b in _RGB_BANDS)
           else _default_rgb(s.shape[-3]))
    rows = _per_image(s, lo, h, rgb, options)
    lead = s.shape[:-3]
    coords: dict[Hashable, xr.DataArray] = {d: sr[d] for d in keep if d in sr.coords}
    data = {key: xr.DataArray(np.array([r[key] for r in rows]).reshape(lead), dims=keep, coords=coords,
                              attrs={"units": OPENSR_TEST_METRICS[key]}) for key in rows[0]}
    return xr.Dataset(data, attrs={"metrics": "opensr-test 1.3.3 definitions (ND distance, pixel "
                                   "aggregation)", "border": options["border"]})


# --------------------------------------------------------------------------- one image


def _image_metrics(sr, lr, hr, rgb, *, border, harmonize, align, threshold, temperature) -> dict[str, float]:
    """All metrics of one ``(band, H, W)`` SR image, its LR and (optional) HR, float64."""
    scale = sr.shape[-1] // lr.shape[-1]
    if border % scale or border < 0 or 2 * border >= min(sr.shape[-2:]):
        raise InputError(f"border {border} must be a non-negative multiple of the scale {scale} and "
                         f"leave pixels of the {sr.shape[-2:]} image; pass border=0 to keep all")
    sr, lr = _crop(sr, border), _crop(lr, border // scale)
    hr = None if hr is None else _crop(hr, border)
    lr_ok = np.isfinite(lr).all(axis=0)
    sr_ok = np.isfinite(sr).all(axis=0)
    block_ok = sr_ok.reshape(lr.shape[-2], scale, lr.shape[-1], scale).all(axis=(1, 3))
    with _quiet():
        sr_down = _resample(sr, sr_ok, lr.shape[-2:], float(scale))
        on_lr = lr_ok & block_ok
        out = {"reflectance": _masked_mean(np.abs(lr - sr_down).mean(axis=0), on_lr),
               "spectral": _masked_mean(angle_map(lr, sr_down, axis=0), on_lr),
               "spatial": _shift_length(sr_down[rgb].mean(axis=0), lr[rgb].mean(axis=0), on_lr)}
        if hr is not None:
            ok = sr_ok & np.isfinite(hr).all(axis=0) & np.repeat(np.repeat(lr_ok, scale, 0), scale, 1)
            lr_up = _resample(lr, lr_ok, sr.shape[-2:], 1.0 / scale)
            sr_h = _harmonize(sr, hr, ok, harmonize, align)
            out["synthesis"] = _masked_mean(np.abs(lr_up - sr_h).mean(axis=0), ok)
            out.update(_correctness(lr_up, sr_h, hr, ok, threshold, temperature))
    return out


def _crop(img: np.ndarray, n: int) -> np.ndarray:
    return img[..., n:-n, n:-n] if n else img


def _masked_mean(values: np.ndarray, ok: np.ndarray) -> float:
    return float(np.nanmean(values[ok])) if ok.any() else float("nan")


def _correctness(lr_up, sr, hr, ok, threshold, temperature) -> dict[str, float]:
    d_ref, d_im, d_om = _nd(lr_up, hr), _nd(sr, hr), _nd(sr, lr_up)
    if threshold is None:
        ref = d_ref[ok & np.isfinite(d_ref)]
        k = int(_QUANTILE * ref.size)
        threshold = np.partition(ref, k - 1)[k - 1] if k >= 1 else np.nan
    keep = ok & ((d_ref > threshold) | (d_im > threshold) | (d_om > threshold))
    if not keep.any():
        return {"hallucination": np.nan, "omission": np.nan, "improvement": np.nan}
    x, y = d_im[keep] / d_ref[keep], d_om[keep] / d_ref[keep]
    damp = 1.0 - np.exp(-_LAMBDA * (x + y - 1.0))
    scores = np.stack([x + y * damp, y + x * damp, np.exp(-_LAMBDA * x * y)])  # im, om, ha
    logits = -scores / temperature
    logits -= np.max(logits, axis=0)  # softmin, written to neither overflow nor underflow to 0/0
    weights = np.exp(logits)
    member = weights / weights.sum(axis=0)
    return {"hallucination": float(np.nanmean(member[2])), "omission": float(np.nanmean(member[1])),
            "improvement": float(np.nanmean(member[0]))}


def _nd(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Normalised difference, band mean: ``mean |a - b| / |a + b + 1e-8|`` per pixel."""
    return np.nanmean(np.abs(a - b) / np.abs(a + b + _ND_EPS), axis=0)


def _harmonize(sr, hr, ok, harmonize: bool, align: bool) -> np.ndarray:
    out = sr.copy()
    if harmonize:
        for b in range(sr.shape[0]):
            out[b][ok] = _match_histogram(sr[b][ok], hr[b][ok])
    if align and ok.any():
        shift = _phase_shift(_nan_to_mean(hr.mean(axis=0), ok), _nan_to_mean(out.mean(axis=0), ok))
        if shift is not None:
            out = _translate(out, np.isfinite(out).all(axis=0), shift)
    return out


def _match_histogram(values: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Quantile mapping: each value takes the reference value at its empirical CDF level."""
    if values.size == 0:
        return values
    levels, index, counts = np.unique(values, return_inverse=True, return_counts=True)
    ref_levels, ref_counts = np.unique(reference, return_counts=True)
    cdf, ref_cdf = np.cumsum(counts) / values.size, np.cumsum(ref_counts) / reference.size
    return np.interp(cdf, ref_cdf, ref_levels)[index.ravel()]


# --------------------------------------------------------------------------- geometry


def _shift_length(reference: np.ndarray, moving: np.ndarray, ok: np.ndarray) -> float:
    if not ok.any():
        return float("nan")
    shift = _phase_shift(_nan_to_mean(reference, ok), _nan_to_mean(moving, ok))
    return float("nan") if shift is None else float(np.hypot(*shift))


def _nan_to_mean(img: np.ndarray, ok: np.ndarray) -> np.ndarray:
    fill = img[ok].mean() if ok.any() else 0.0
    return np.where(ok & np.isfinite(img), img, fill)


def _phase_shift(reference: np.ndarray, moving: np.ndarray) -> np.ndarray | None:
    """The translation ``(dy, dx)`` with ``reference(p) ~ moving(p - shift)``, to 1/50 pixel.

    Phase correlation: the peak of the inverse FFT of the normalised cross-power spectrum, then the
    same correlation evaluated on a 1/50-pixel grid 1.5 pixels wide around it by a matrix-multiply
    DFT (Guizar-Sicairos, Thurman & Fienup 2008). None if longer than 5 pixels (no registration).
    """
    cross = np.fft.fft2(reference) * np.conj(np.fft.fft2(moving))
    cross /= np.maximum(np.abs(cross), 100 * np.finfo(np.float64).eps)
    coarse = np.abs(np.fft.ifft2(cross))
    shape = np.array(cross.shape, dtype=np.float64)
    peak = np.array(np.unravel_index(np.argmax(coarse), coarse.shape), dtype=np.float64)
    wrap = peak > np.trunc(shape / 2)
    peak[wrap] -= shape[wrap]
    peak = np.round(peak * _UPSAMPLE) / _UPSAMPLE
    size = np.ceil(_UPSAMPLE * 1.5)
    centre = np.trunc(size / 2)
    offsets = (np.arange(size) - centre) / _UPSAMPLE
    rows = np.exp(2j * np.pi * np.outer(peak[0] + offsets, np.fft.fftfreq(cross.shape[0])))
    cols = np.exp(2j * np.pi * np.outer(np.fft.fftfreq(cross.shape[1]), peak[1] + offsets))
    fine = np.abs(rows @ cross @ cols)
    best = np.array(np.unravel_index(np.argmax(fine), fine.shape), dtype=np.float64)
    shift = peak + (best - centre) / _UPSAMPLE
    shift[shape == 1] = 0.0
    return None if np.hypot(*shift) > _MAX_SHIFT else shift


def _resample(img: np.ndarray, ok: np.ndarray, size: tuple[int, int], step: float) -> np.ndarray:
    """Antialiased bilinear resize of ``(band, y, x)`` to ``size``, ``step`` source pixels per output
    pixel (4 to shrink 4x, 0.25 to enlarge 4x), valid pixels only."""
    taps = [_triangle_taps(n, n_out, step) for n, n_out in zip(img.shape[-2:], size)]
    return _weigh(img, ok, taps)


def _translate(img: np.ndarray, ok: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """``img(p - shift)`` by bilinear interpolation, edges replicated, valid pixels only."""
    taps = [_shift_taps(n, float(d)) for n, d in zip(img.shape[-2:], shift)]
    return _weigh(img, ok, taps)


def _triangle_taps(n: int, n_out: int, step: float) -> tuple[np.ndarray, np.ndarray]:
    """Source indices and weights ``(taps, n_out)`` of a bilinear resize (antialiased when shrinking:
    the triangle is widened to ``step`` source pixels on each side)."""
    support = max(step, 1.0)
    centre = step * (np.arange(n_out) + 0.5)
    first = np.floor(centre - support).astype(int)
    taps = first[None, :] + np.arange(int(np.ceil(2 * support)) + 2)[:, None]
    weights = np.clip(1.0 - np.abs(taps + 0.5 - centre) / support, 0.0, None)
    weights[(taps < 0) | (taps >= n)] = 0.0
    return np.clip(taps, 0, n - 1), weights / weights.sum(axis=0)


def _shift_taps(n: int, d: float) -> tuple[np.ndarray, np.ndarray]:
    src = np.arange(n) - d
    low = np.floor(src)
    frac = src - low
    taps = np.stack([low, low + 1]).astype(int)
    return np.clip(taps, 0, n - 1), np.stack([1.0 - frac, frac])


def _weigh(img: np.ndarray, ok: np.ndarray, taps) -> np.ndarray:
    """Separable weighted sums over the last two axes; invalid pixels' weights are dropped and the
    rest renormalised (normalised convolution), NaN where no valid pixel contributes."""
    num = np.where(ok, img, 0.0)
    den = ok.astype(np.float64)
    for axis, (index, weight) in zip((-2, -1), taps):
        shape = [1] * num.ndim
        shape[axis] = -1
        num = sum(np.take(num, index[k], axis=axis) * weight[k].reshape(shape) for k in range(len(index)))
        den = sum(np.take(den, index[k], axis=axis) * weight[k].reshape(shape[1:])
                  for k in range(len(index)))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
