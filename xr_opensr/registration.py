"""Sub-pixel co-registration of Sentinel-2 looks of one place (issue 21: multi-date super-resolution).

Numpy only. Images are ``(C, H, W)`` (bands used jointly) or ``(H, W)`` arrays on the same pixel grid
(e.g. 10 m LR pixels); NaN marks nodata.

**The shift convention** (used by every function here): a shift ``(dy, dx)`` in pixels moves the image
*content* by ``+dy`` rows (down) and ``+dx`` columns (right)::

    shift_image(img, (dy, dx))[..., y, x] == img[..., y - dy, x - dx]     (interpolated)

:func:`estimate_shift` ``(ref, mov)`` returns the ``(dy, dx)`` with ``mov(y, x) ~ gain * ref(y - dy, x - dx)
+ offset`` (per band), i.e. ``shift_image(ref, s) ~ mov``; to bring ``mov`` onto ``ref``'s grid use
``shift_image(mov, -s)``. On a grid with ``y`` decreasing northwards (north-up rasters), ``dy > 0`` means
``mov``'s features lie south of ``ref``'s, ``dx > 0`` east.

* :func:`shift_image` -- translation by cubic convolution (default; Keys, a = -0.5: the kernel of
  :mod:`xr_opensr.sensor`, reused), bilinear or Lanczos-3/4, NaN-aware.
* :func:`estimate_shift` -- phase correlation (integer pixels) then iterative, re-warped Gauss-Newton
  (Lucas-Kanade) refinement with a per-band gain and offset and Huber weights; a quality report says
  when the window cannot be registered (too few valid pixels, no texture, no correlation) and the
  shift falls back to (0, 0).
* :func:`fit_gain_offset` -- per-band robust least squares ``mov * gain + offset ~ ref``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from .sensor import _cubic_weights

__all__ = ["ShiftQuality", "estimate_shift", "fit_gain_offset", "shift_image"]

#: Keys' cubic-convolution parameter (the kernel of ``sensor.bicubic_upsample``).
KEYS_A = -0.5
_ORDERS = ("cubic", "linear", "lanczos3", "lanczos4")
_LANCZOS = {"lanczos3": 3, "lanczos4": 4}
_HUBER_K = 1.345  # Huber threshold in robust standard deviations (95 % efficiency for Gaussian noise)


# ------------------------------------------------------------------------------------ shift_image
def shift_image(img, shift, *, order: str = "cubic", border: str = "nan") -> np.ndarray:
    """Translate the content of ``img`` by ``shift = (dy, dx)`` pixels (any real values).

    ``out[..., y, x] = img[..., y - dy, x - dx]``, interpolated separably (rows, then columns) with
    Keys' cubic convolution kernel (a = -0.5, 4 taps per axis; ``order="cubic"``, the kernel of
    ``sensor.bicubic_upsample``), linearly (2 taps; ``"linear"``) or with a Lanczos windowed sinc
    (6 or 8 taps, normalised to sum 1; ``"lanczos3"``, ``"lanczos4"``: more accurate sub-pixel
    phase, used by :func:`estimate_shift`). An integer shift moves pixels exactly (one tap of weight 1).

    NaN-aware: an output pixel is NaN when any input pixel of its support (the taps of non-zero
    weight: 4 x 4 pixels for a fractional cubic shift, 2 x 2 linear, 8 x 8 lanczos4) is NaN.
    ``border`` says what lies outside the image: ``"nan"`` (default) -- the output pixels whose
    support reaches outside are NaN (strips of at most ``ceil(|dy|) + 2`` rows and
    ``ceil(|dx|) + 2`` columns with the cubic kernel, + 4 with lanczos4); ``"edge"`` -- the border
    pixels are replicated outwards (no NaN from the border).

    Parameters
    ----------
    img : array (..., H, W), e.g. (C, H, W) or (H, W); any float or integer dtype.
    shift : (dy, dx) in pixels.
    order : "cubic", "linear", "lanczos3" or "lanczos4".
    border : "nan" or "edge".

    Returns
    -------
    numpy.ndarray of the shape of ``img``; computed in float64, returned as float64 for float64
    input and float32 otherwise.
    """
    arr = np.asarray(img)
    if arr.ndim < 2:
        raise ValueError(f"img must have at least 2 dims (..., H, W); got shape {arr.shape}")
    dy, dx = _check_shift(shift)
    if order not in _ORDERS:
        raise ValueError(f"order must be one of {_ORDERS}; got {order!r}")
    if border not in ("nan", "edge"):
        raise ValueError(f"border must be 'nan' or 'edge'; got {border!r}")
    out_dtype = np.float64 if arr.dtype == np.float64 else np.float32
    out = np.asarray(arr, dtype=np.float64)
    out = _shift_axis(out, dy, -2, order, border)
    out = _shift_axis(out, dx, -1, order, border)
    return out.astype(out_dtype, copy=False)


def _check_shift(shift) -> tuple[float, float]:
    s = np.asarray(shift, dtype=np.float64)
    if s.shape != (2,) or not np.all(np.isfinite(s)):
        raise ValueError(f"shift must be two finite numbers (dy, dx); got {shift!r}")
    return float(s[0]), float(s[1])


def _taps(d: float, order: str) -> tuple[int, list[tuple[int, float]]]:
    """``out[i] = sum_j w_j * in[i + k0 + j]`` for a content shift ``d``: (k0, [(j, w_j), ...])."""
    p = -d  # out[i] samples the input at i - d
    k0 = math.floor(p)
    t = p - k0
    if t == 0.0:
        return k0, [(0, 1.0)]
    if order == "linear":
        return k0, [(0, 1.0 - t), (1, t)]
    if order == "cubic":
        weights = _cubic_weights(np.array([t]), KEYS_A)[:, 0]  # taps at -1, 0, 1, 2
        return k0, [(j, float(w)) for j, w in zip((-1, 0, 1, 2), weights) if w != 0.0]
    n = _LANCZOS[order]
    js = np.arange(-n + 1, n + 1)  # taps at -n+1 .. n
    weights = np.sinc(t - js) * np.sinc((t - js) / n)
    weights /= weights.sum()  # a constant stays constant
    return k0, [(int(j), float(w)) for j, w in zip(js, weights)]


def _shift_axis(arr: np.ndarray, d: float, axis: int, order: str, border: str) -> np.ndarray:
    if d == 0.0:
        return arr
    n = arr.shape[axis]
    k0, taps = _taps(d, order)
    lo_idx = k0 + min(j for j, _ in taps)  # smallest input index read by out[0]
    hi_idx = n - 1 + k0 + max(j for j, _ in taps)  # largest read by out[n-1]
    pad_lo, pad_hi = max(0, -lo_idx), max(0, hi_idx - (n - 1))
    pad = [(0, 0)] * arr.ndim
    pad[axis] = (pad_lo, pad_hi)
    if border == "nan":
        padded = np.pad(arr, pad, mode="constant", constant_values=np.nan)
    else:
        padded = np.pad(arr, pad, mode="edge")
    index = [slice(None)] * arr.ndim
    out = None
    for j, w in taps:
        start = pad_lo + k0 + j
        index[axis] = slice(start, start + n)
        term = w * padded[tuple(index)]
        out = term if out is None else out + term
    return out


# ------------------------------------------------------------------------------------ gain/offset
def fit_gain_offset(ref, mov, valid=None, *, robust: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Per band, ``gain`` and ``offset`` with ``mov * gain + offset ~ ref`` on the valid pixels.

    Least squares over the pixels where ``valid`` is True and both images are finite; with
    ``robust=True`` (default) re-weighted by Huber weights (k = 1.345 robust standard deviations of
    the residual, MAD-scaled; 10 iterations), so that a few outliers (an unmasked cloud, a changed
    field) pull little. A band with fewer than 2 usable pixels or a constant ``mov`` gets gain 1 and
    offset ``mean(ref - mov)`` (0 when nothing is usable).

    Parameters
    ----------
    ref, mov : arrays (C, H, W) or (H, W), the same shape.
    valid : boolean (H, W), optional; True = use the pixel.

    Returns
    -------
    (gain, offset): float64 arrays of shape (C,) ((1,) for (H, W) input).
    """
    r, m = _as_chw(ref, "ref"), _as_chw(mov, "mov")
    if r.shape != m.shape:
        raise ValueError(f"ref and mov must have the same shape; got {r.shape} and {m.shape}")
    mask = _valid_mask(valid, r.shape[1:]) & np.all(np.isfinite(r), axis=0) & np.all(np.isfinite(m), axis=0)
    gains, offsets = np.ones(r.shape[0]), np.zeros(r.shape[0])
    for c in range(r.shape[0]):
        y, x = r[c][mask], m[c][mask]
        if y.size == 0:
            continue
        gains[c], offsets[c] = _robust_line(x, y, robust)
    return gains, offsets


def _robust_line(x: np.ndarray, y: np.ndarray, robust: bool, iterations: int = 10) -> tuple[float, float]:
    """``y ~ gain * x + offset`` by (Huber-)weighted least squares (plain least squares, then up to
    ``iterations - 1`` Huber re-weightings)."""
    w = np.ones_like(x)
    gain, offset = 1.0, float(np.mean(y - x))
    for _ in range(iterations if robust else 1):
        sw = w.sum()
        xm, ym = (w * x).sum() / sw, (w * y).sum() / sw
        sxx = (w * (x - xm) ** 2).sum()
        if x.size < 2 or sxx <= 1e-300:
            return 1.0, float(np.mean(y - x))
        new_gain = float((w * (x - xm) * (y - ym)).sum() / sxx)
        new_offset = float(ym - new_gain * xm)
        done = abs(new_gain - gain) < 1e-10 * max(1.0, abs(gain)) and abs(new_offset - offset) < 1e-12
        gain, offset = new_gain, new_offset
        if done or not robust:
            break
        w = _huber_weights(y - (gain * x + offset))
    return gain, offset


def _products(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b.T`` batched (torch: see :func:`_warp`)."""
    import torch

    return (torch.from_numpy(a) @ torch.from_numpy(b).transpose(1, 2)).numpy()


def _median(values: np.ndarray) -> float:
    """``np.median`` of a 1-D array (its partition, without the wrapper's overhead): the same value."""
    n = values.size
    if n % 2:
        return float(np.partition(values, n // 2)[n // 2])
    part = np.partition(values, (n // 2 - 1, n // 2))
    return float((part[n // 2 - 1] + part[n // 2]) / 2)


def _huber_weights(res: np.ndarray) -> np.ndarray:
    scale = 1.4826 * _median(np.abs(res - _median(res)))
    if not scale > 0:
        return np.ones_like(res)
    a = np.abs(res) / (_HUBER_K * scale)
    return np.where(a <= 1.0, 1.0, 1.0 / np.maximum(a, 1e-300))


# ------------------------------------------------------------------------------------ estimate_shift
@dataclass(frozen=True)
class ShiftQuality:
    """How :func:`estimate_shift` went.

    Attributes
    ----------
    ok : bool
        True when the shift was estimated; False when it fell back to (0, 0).
    reason : str
        "ok", or why it fell back: "too few valid pixels", "no texture" (the position cannot be
        determined: a flat window or texture along one direction only), "low correlation" (the
        looks do not show the same content: clouds, change, noise), "not converged",
        "beyond max_shift", "uncertain" (predicted standard error above ``max_sigma``).
    shift : (dy, dx) float64
        The estimate before any fallback (NaN when none was made).
    sigma : float
        Predicted standard error of the shift (pixels, the larger axis of its covariance), from the
        residual after registration and the gradient structure of ``ref``; inf without texture.
    correlation : float
        Mean over bands of the (weighted) correlation of ``ref`` and the registered ``mov`` on the
        valid pixels (1: the same image up to gain/offset; ~0: unrelated).
    n_valid : int
        Pixels used in the final fit (valid in both images after re-warping).
    iterations : int
        Gauss-Newton iterations run.
    gain, offset : (C,) float64
        Per band, ``registered_mov * gain + offset ~ ref`` at the estimate.
    """

    ok: bool
    reason: str
    shift: np.ndarray
    sigma: float
    correlation: float
    n_valid: int
    iterations: int
    gain: np.ndarray
    offset: np.ndarray


def estimate_shift(ref, mov, valid=None, *, max_shift: float = 2.0, return_quality: bool = False,
                   min_valid: int = 256, min_correlation: float = 0.5, max_sigma: float = 0.1,
                   max_iter: int = 30, tol: float = 1e-4, interpolation: str = "lanczos4"):
    """Sub-pixel translation ``(dy, dx)`` of ``mov`` relative to ``ref`` (pixels).

    Convention: ``mov(y, x) ~ gain_c * ref(y - dy, x - dx) + offset_c`` per band ``c``, i.e.
    ``shift_image(ref, (dy, dx)) ~ mov`` and ``shift_image(mov, (-dy, -dx)) ~ ref`` up to gain/offset.

    Method (float64, deterministic):

    1. the valid pixels: ``valid`` and finite in every band of both images;
    2. an integer start by phase correlation (bands summed; invalid pixels set to the band mean,
       Hann-apodised), searched within ``|dy|, |dx| <= ceil(max_shift)``;
    3. Gauss-Newton (Lucas-Kanade) refinement: ``mov`` is re-warped by the current estimate with
       :func:`shift_image` (``order=interpolation``, default Lanczos-4: its phase error is ~20x
       smaller than the cubic kernel's, whose pixel locking biases estimates by up to ~0.02 px on
       sharp content; pixels whose support touches NaN or the border drop out), then one
       weighted least-squares step solves jointly for the shift increment and a gain and offset per
       band, ``ref_c ~ a_c * warped_c + b_c + delta . grad(ref_c)`` (bands scaled to unit variance of
       ``ref``, Huber weights on the residual against outliers), until the increment is below
       ``tol`` pixels (at most ``max_iter`` steps);
    4. the quality checks of :class:`ShiftQuality`; if one fails, the result is (0, 0).

    Measured (``tests/test_registration.py``): on textured 48 x 48 .. 256 x 256 windows with noise,
    a gain change and a masked cloud, errors <= 0.004 px; a real look shifted by a known amount,
    <= 0.005 px; between real dates, ``est(A, B) + est(B, A)`` within 0.015 px and closure over three
    dates within 0.024 px (the looks are not exact translations of each other).

    Parameters
    ----------
    ref, mov : arrays (C, H, W) or (H, W), the same shape, on the same pixel grid.
    valid : boolean (H, W), optional; True = usable in both images (e.g. not cloudy). NaN in either
        image is invalid too.
    max_shift : the largest ``|dy|`` or ``|dx|`` accepted (pixels); a larger estimate falls back.
    return_quality : also return the :class:`ShiftQuality`.
    min_valid : fewest valid pixels to try (else "too few valid pixels").
    min_correlation : least mean correlation of ``ref`` and the registered ``mov`` (else
        "low correlation").
    max_sigma : largest predicted standard error in pixels (else "no texture" when the gradient
        matrix is singular, "uncertain" otherwise).
    max_iter, tol : the Gauss-Newton stopping rule.
    interpolation : the kernel of the re-warping (an ``order`` of :func:`shift_image`). To recover a
        shift made by ``shift_image``'s default cubic kernel exactly, estimate with "cubic" too (that
        kernel moves fine detail by slightly less than the shift).

    Returns
    -------
    numpy.ndarray (2,) float64 ``(dy, dx)``; with ``return_quality``, ``(shift, ShiftQuality)``.
    """
    r, m = _as_chw(ref, "ref"), _as_chw(mov, "mov")
    if r.shape != m.shape:
        raise ValueError(f"ref and mov must have the same shape; got {r.shape} and {m.shape}")
    if not (np.isfinite(max_shift) and max_shift >= 0):
        raise ValueError(f"max_shift must be a finite number >= 0; got {max_shift!r}")
    if interpolation not in _ORDERS:
        raise ValueError(f"interpolation must be one of {_ORDERS}; got {interpolation!r}")
    quality = _estimate(r, m, _valid_mask(valid, r.shape[1:]), float(max_shift), int(min_valid),
                        float(min_correlation), float(max_sigma), int(max_iter), float(tol), interpolation)
    shift = quality.shift.copy() if quality.ok else np.zeros(2)
    return (shift, quality) if return_quality else shift


def _as_chw(img, name: str) -> np.ndarray:
    arr = np.asarray(img, dtype=np.float64)
    if arr.ndim == 2:
        return arr[None]
    if arr.ndim != 3:
        raise ValueError(f"{name} must be (C, H, W) or (H, W); got shape {arr.shape}")
    return arr


def _valid_mask(valid, shape: tuple[int, int]) -> np.ndarray:
    if valid is None:
        return np.ones(shape, dtype=bool)
    v = np.asarray(valid)
    if v.shape != tuple(shape) or v.dtype != bool:
        raise ValueError(f"valid must be a boolean array of shape {tuple(shape)}; got {v.dtype} {v.shape}")
    return v


def _fail(reason: str, c: int, shift=(np.nan, np.nan), **kw) -> ShiftQuality:
    fields = {"sigma": math.inf, "correlation": math.nan, "n_valid": 0, "iterations": 0,
              "gain": np.ones(c), "offset": np.zeros(c)}
    fields.update(kw)
    return ShiftQuality(ok=False, reason=reason, shift=np.asarray(shift, dtype=np.float64), **fields)


def _estimate(r: np.ndarray, m: np.ndarray, valid: np.ndarray, max_shift: float, min_valid: int,
              min_correlation: float, max_sigma: float, max_iter: int, tol: float,
              interpolation: str) -> ShiftQuality:
    c = r.shape[0]
    mask = valid & np.all(np.isfinite(r), axis=0) & np.all(np.isfinite(m), axis=0)
    if mask.sum() < min_valid:
        return _fail("too few valid pixels", c, n_valid=int(mask.sum()))
    # bands to unit variance of ref (so each counts alike); gains/offsets are reported in input units
    mean = np.array([r[i][mask].mean() for i in range(c)])
    scale = np.array([r[i][mask].std() for i in range(c)])
    if not np.all(scale > 1e-12 * np.maximum(1.0, np.abs(mean))):
        return _fail("no texture", c, n_valid=int(mask.sum()))
    rn = (r - mean[:, None, None]) / scale[:, None, None]
    mn = (m - mean[:, None, None]) / scale[:, None, None]
    rn[:, ~mask] = np.nan
    mn[:, ~mask] = np.nan

    s = _phase_correlation(rn, mn, mask, math.ceil(max_shift))
    gy, gx = np.gradient(rn, axis=(1, 2))  # NaN next to invalid pixels: they drop out
    fixed = np.all(np.isfinite(gy), axis=0) & np.all(np.isfinite(gx), axis=0) & np.all(np.isfinite(rn), axis=0)
    columns = np.stack([gy, gx, np.zeros_like(rn), np.ones_like(rn), rn], axis=1)  # each step's warped goes in 2
    state = None
    weights = None
    converged = False
    it = 0
    mn_filled, mn_nan = np.where(np.isnan(mn), 0.0, mn), np.isnan(mn).any(axis=0).astype(np.float64)
    for it in range(1, max_iter + 1):  # noqa: B007 (it is reported)
        warped, warped_bad = _warp(mn_filled, mn_nan, -s, interpolation)
        state = _gauss_newton_step(rn, warped, gy, gx, weights, (~warped_bad & fixed, columns))
        if state is None:
            return _fail("too few valid pixels", c, shift=s, iterations=it)
        delta, weights = state["delta"], state["weights"]
        step = float(np.max(np.abs(delta)))
        if step > 0.5:  # damp steps far from the linear range
            delta = delta * (0.5 / step)
        s = s + delta
        if np.max(np.abs(s)) > max_shift + 1.0:
            return _fail("beyond max_shift", c, shift=s, iterations=it, n_valid=state["n"])
        if step < tol:
            converged = True
            break
    _step_quality(state)  # sigma and correlation of the last step only
    # rn ~ a * warped_n + b (unit-variance bands) -> in input units ref ~ a * mov_registered + offset
    quality = {"sigma": state["sigma"], "correlation": state["corr"], "n_valid": state["n"],
               "iterations": it, "gain": state["a"].copy(), "offset": mean * (1.0 - state["a"]) + scale * state["b"]}
    reason = "ok"
    if not np.isfinite(state["sigma"]):
        reason = "no texture"
    elif state["corr"] < min_correlation:
        reason = "low correlation"
    elif not converged:
        reason = "not converged"
    elif state["sigma"] > max_sigma:
        reason = "uncertain"
    elif np.max(np.abs(s)) > max_shift:
        reason = "beyond max_shift"
    return ShiftQuality(ok=reason == "ok", reason=reason, shift=np.asarray(s, dtype=np.float64), **quality)


def _warp(filled: np.ndarray, nan: np.ndarray, shift: np.ndarray, order: str) -> tuple[np.ndarray, np.ndarray]:
    """``shift_image(img, shift, order=order)`` (border "nan") of ``img`` (C, H, W) given as ``filled`` (NaN
    set to 0) and ``nan`` (H, W: 1.0 where any band is NaN; every band NaN there): separable matrix products
    (torch: see :mod:`xr_opensr.models.multidate`), the same result up to float rounding; and where it is NaN
    (H, W)."""
    import torch

    (my, sy, out_y), (mx, sx, out_x) = (_axis_matrix(filled.shape[1], float(shift[0]), order),
                                        _axis_matrix(filled.shape[2], float(shift[1]), order))
    out = (my @ torch.from_numpy(filled) @ mx.T).numpy()
    bad = out_y[:, None] | out_x[None, :]
    if nan.any():  # (no NaN: no product)
        bad = bad | ((sy @ torch.from_numpy(nan) @ sx.T).numpy() > 0)
    out[:, bad] = np.nan
    return out, bad


@functools.lru_cache(maxsize=512)
def _axis_matrix(n: int, d: float, order: str) -> tuple:
    """(weights (n, n), support (n, n), rows reaching outside (n,)) of :func:`_shift_axis` along one axis:
    ``out = weights @ in``; an output is NaN where its support holds a NaN or it reaches outside."""
    import torch

    weights, support, outside = np.zeros((n, n)), np.zeros((n, n)), np.zeros(n, dtype=bool)
    if d == 0.0:
        np.fill_diagonal(weights, 1.0)
        np.fill_diagonal(support, 1.0)
    else:
        k0, taps = _taps(d, order)
        rows = np.arange(n)
        for j, w in taps:
            idx = rows + k0 + j
            inside = (idx >= 0) & (idx < n)
            outside |= ~inside
            weights[rows[inside], idx[inside]] += w
            support[rows[inside], idx[inside]] = 1.0
    outside.flags.writeable = False
    return torch.from_numpy(weights), torch.from_numpy(support), outside


def _phase_correlation(rn: np.ndarray, mn: np.ndarray, mask: np.ndarray, radius: int) -> np.ndarray:
    """Integer (dy, dx) with ``mn(y, x) ~ rn(y - dy, x - dx)``, |dy|, |dx| <= radius (bands summed)."""
    h, w = mask.shape
    win = np.outer(np.hanning(h), np.hanning(w)) if min(h, w) > 2 else np.ones((h, w))
    a = np.where(mask, rn, 0.0) * win
    b = np.where(mask, mn, 0.0) * win
    cross = np.fft.fft2(b) * np.conj(np.fft.fft2(a))
    cross = cross.sum(axis=0)
    cross /= np.maximum(np.abs(cross), 1e-12 * max(np.abs(cross).max(), 1e-300))
    corr = np.fft.ifft2(cross).real
    best, best_val = (0, 0), -np.inf
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            v = corr[dy % h, dx % w]
            if v > best_val + 1e-12:
                best, best_val = (dy, dx), v
    return np.array(best, dtype=np.float64)


def _gauss_newton_step(rn, warped, gy, gx, weights, known=None):
    """One weighted LS step of ``rn_c ~ a_c * warped_c + b_c + dy * gy_c + dx * gx_c`` (all bands).

    ``known``: (where ``rn``, ``gy``, ``gx`` and ``warped`` are finite in every band, ``np.stack([gy, gx, any,
    ones, rn], axis=1)`` (C, 5, H, W): its slot 2 is overwritten with ``warped``), or None. Returns None when fewer than 16 pixels are usable, else a dict with the increment
    ``delta``, per-band ``a``/``b``, the Huber ``weights`` of the new residual, ``n``, and what
    :func:`_step_quality` needs to add ``sigma`` and ``corr`` (computed for the last step only).
    """
    c = rn.shape[0]
    if known is None:
        ok = np.all(np.isfinite(warped), axis=0) & np.all(np.isfinite(gy), axis=0) \
            & np.all(np.isfinite(gx), axis=0) & np.all(np.isfinite(rn), axis=0)
        stacked = np.stack([gy, gx, warped, np.ones_like(warped), rn], axis=1)
    else:
        ok, stacked = known
        stacked[:, 2] = warped
    n = int(ok.sum())
    if n < 16:
        return None
    cols = stacked[:, :, ok]  # (C, 5, N): the 4 unknowns' columns, the data
    gyv, gxv, wv, y = cols[:, 0], cols[:, 1], cols[:, 2], cols[:, 4]
    wt = np.ones_like(y) if weights is None or weights.shape != ok.shape else None
    if wt is None:
        wt = np.broadcast_to(weights[ok], y.shape)
    # unknowns: [dy, dx, a_0, b_0, ..., a_{C-1}, b_{C-1}]; normal equations N theta = rhs
    k = 2 + 2 * c
    blocks = _products(cols[:, :4] * wt[:, None], cols)  # (C, 4, 5): the normal equations' blocks, their rhs
    band_rhs, blocks = blocks[:, :, 4], blocks[:, :, :4]
    normal = np.zeros((k, k))
    rhs = np.zeros(k)
    normal[:2, :2] = blocks[:, :2, :2].sum(axis=0)
    rhs[:2] = band_rhs[:, :2].sum(axis=0)
    for i in range(c):
        normal[2 + 2 * i:4 + 2 * i, 2 + 2 * i:4 + 2 * i] = blocks[i, 2:, 2:]
        normal[:2, 2 + 2 * i:4 + 2 * i] = blocks[i, :2, 2:]
        normal[2 + 2 * i:4 + 2 * i, :2] = blocks[i, 2:, :2]
    rhs[2:] = band_rhs[:, 2:].ravel()
    try:
        theta = np.linalg.solve(normal, rhs)
        singular = False
    except np.linalg.LinAlgError:
        theta = np.linalg.lstsq(normal, rhs, rcond=None)[0]
        singular = True
    a, b = theta[2::2], theta[3::2]
    fit_wo_shift = a[:, None] * wv + b[:, None]
    res = y - fit_wo_shift - theta[0] * gyv - theta[1] * gxv
    new_w = _huber_weights(res.ravel()).reshape(res.shape).min(axis=0)  # a pixel's weight: its worst band
    full_w = np.zeros(ok.shape)
    full_w[ok] = new_w
    return {"delta": theta[:2].copy(), "a": a, "b": b, "weights": full_w, "n": n,
            "_quality": (normal, singular, res, wt, y, fit_wo_shift)}


def _step_quality(state: dict) -> None:
    """Adds ``sigma`` (the predicted standard error of the shift) and ``corr`` to a step's ``state``."""
    normal, singular, res, wt, y, fit_wo_shift = state.pop("_quality")
    k = normal.shape[0]
    cov_unit = np.full((k, k), np.inf)
    if not singular:
        try:
            cov_unit = np.linalg.inv(normal)
        except np.linalg.LinAlgError:
            pass
    # predicted standard error of the shift: residual variance x (N^-1) position block
    dof = max(1, res.size - k)
    sigma2 = float((wt * res**2).sum() / dof)
    block = cov_unit[:2, :2]
    if np.all(np.isfinite(block)):
        ev = np.linalg.eigvalsh(0.5 * (block + block.T))
        sigma = math.sqrt(max(sigma2 * float(ev.max()), 0.0)) if ev.min() > 0 else math.inf
        cond_ok = ev.max() < 1e12 * max(ev.min(), 1e-300)
        if not cond_ok:
            sigma = math.inf
    else:
        sigma = math.inf
    sw = wt.sum(axis=1)
    dy_ = y - ((wt * y).sum(axis=1) / sw)[:, None]
    df_ = fit_wo_shift - ((wt * fit_wo_shift).sum(axis=1) / sw)[:, None]
    den = np.sqrt((wt * dy_**2).sum(axis=1) * (wt * df_**2).sum(axis=1))
    cov = (wt * dy_ * df_).sum(axis=1)
    corrs = [float(cv / dn) if dn > 0 else 0.0 for cv, dn in zip(cov, den)]
    state["sigma"], state["corr"] = sigma, float(np.mean(corrs))
