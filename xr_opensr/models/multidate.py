"""The multi-date model (kind ``"multidate"``): every valid look at a place sharpens the date asked for.

A composition of the single-date model v2 (:class:`~xr_opensr.models.v2.MeanSpreadModel`, its own
folder, named by ``base``) and a multi-look reconstruction with a few parameters fitted on validation
scenes (``python -m training multidate``). Per patch (its core dims ``("look", "band", "y", "x")``: look
0 is the date asked for, then the other looks of its time window, nearest date first):

1. the single-date mean ``x0`` and standard deviation ``u0`` of the reference look (model v2, unchanged);
2. each other look, where it and the reference are valid: its scene-level sub-pixel shift (``look_shift``,
   the model's ``context``: one estimate per look and date on the input's central window) and a per-band
   gain and offset fitted on the patch (illumination, phenology; :func:`_gain_offset`); a look uncorrelated
   with a textured reference patch (a cloud, another scene) is left out there, all its valid pixels counted
   in ``changed``. Where the scene-level shift is unknown (NaN), the look is registered on the patch
   (shift, gain and offset jointly, :func:`xr_opensr.registration.estimate_shift`), and left out where it
   cannot be (too little texture or valid area); a look that cannot be registered is registered again
   without its gross differences from the reference (beyond 8 robust scales: an object, an unmasked
   cloud), and where it still cannot, left out, its gross differences counted in ``changed``;
3. change: a look's pixels that disagree with the single-date prediction of that look (``x0`` shifted
   and degraded) by more than ``change_threshold`` times the patch's robust residual scale (every band,
   dilated by one pixel) are left out and counted in ``changed``; at most ``looks - 1`` further looks per
   pixel, in the looks' order;
4. the mean: ``x`` minimising ``sum_j |w_j (y_j - D S_j x)|^2 + mu |x - x0|^2`` (``D`` the sensor's PSF and
   4 x 4 area mean, ``S_j`` the look's shift, ``w_j`` its valid, unchanged pixels; conjugate gradients,
   ``iterations`` steps from ``x0``, every look in one batched product, the normal operator's products in
   float32); an LR pixel seen by the reference look alone keeps ``x0`` exactly;
5. the standard deviation: ``u0`` times the fitted ratio of the number of looks used at the pixel
   (1 for one look), plus ``disagreement`` times the looks' RMS residual after the fit (they disagree
   beyond their noise: the uncertainty grows).

Speed (``benchmarks/bench_multidate.py``): the single-date means of the other looks are computed for the looks
used only, and kept by patch content (a date's patch is another date's look: computed once while kept).

Planes: mean, std, then the per-pixel ``looks`` (looks used, the reference included; 0 under nodata) and
``changed`` (looks left out there for disagreeing). Nodata of the reference date stays nodata: other
dates never fill a date's gaps.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..errors import ConfigError, InputError
from .base import ModelInfo, SampleOptions
from .config import JsonConfig, read_config_json

__all__ = ["MultiDateConfig", "MultiDateModel", "fuse_looks", "shift_matrix"]

LOOK_DIM = "look"


@dataclass(frozen=True)
class MultiDateConfig(JsonConfig):
    """The multi-date model's ``config.json`` (kind ``"multidate"``); no weights of its own.

    Attributes
    ----------
    name, version : written into output attrs.
    base : the single-date model (a shipped name or a folder relative to this one).
    looks : default looks per date (the date itself included) when ``superresolve(looks=None)``.
    mu : weight of the single-date mean in the reconstruction (larger: closer to it).
    iterations : conjugate-gradient steps.
    change_threshold : residual (in robust scales of the patch) beyond which a look's pixel is left out.
    min_valid : least fraction of the reference's valid pixels a look must share to be registered.
    shared_prior : the prior's mean is the single-date means of all the looks used at a pixel, moved onto the
        date asked for and averaged (the same detail whatever the date: no flicker); False: that date's own.
    prior_weight : > 0: the prior's weight per pixel is this over the single-date variance (its spread
        head's), the looks' the inverse of their robust residual variance (a MAP estimate for 1); 0: ``mu``
        times the looks' weight everywhere.
    std_ratio : the standard deviation's factor by number of looks used (entry n-1 for n looks; the last
        entry for more); the first entry is 1.
    disagreement : factor of the looks' RMS residual added to the standard deviation.
    change_std : > 0: the change test's scale per pixel is the robust residual scale and this times the
        single-date std moved onto the look, combined (where the single-date mean is unsure, e.g. at fine
        texture, its prediction of a look is too, and a look is not left out for that); 0: the robust scale alone.
    preconditioner : of the conjugate gradients: ``"jacobi"`` (the normal operator's diagonal: the prior's
        weight varies per pixel, and so does its scale) or ``"none"``.
    provenance : how the parameters were fitted (command, data, date).
    """

    kind: str = "multidate"
    name: str = "xr-opensr-multidate"
    version: str = "0.1.0"
    base: str = "default"
    looks: int = 8
    mu: float = 0.1
    iterations: int = 10
    change_threshold: float = 5.0
    min_valid: float = 0.25
    prior_weight: float = 0.0
    shared_prior: bool = False
    std_ratio: tuple[float, ...] = (1.0,)
    disagreement: float = 0.0
    preconditioner: str = "none"
    change_std: float = 0.0
    provenance: dict = dataclasses.field(default_factory=dict)

    WHERE: ClassVar[str] = "multi-date model config"

    @classmethod
    def from_json(cls, path: str | Path) -> MultiDateConfig:
        cfg = cls.from_dict(read_config_json(path, cls.WHERE, "write it with python -m training multidate"))
        if cfg.preconditioner not in ("none", "jacobi"):
            raise ConfigError(f"{path}: preconditioner must be 'none' or 'jacobi', got {cfg.preconditioner!r}")
        if cfg.kind != "multidate" or not cfg.std_ratio or cfg.std_ratio[0] != 1.0 or min(cfg.std_ratio) <= 0:
            raise ConfigError(f"{path}: kind must be 'multidate' and std_ratio positive, starting with 1.0 (one look "
                              f"is the single-date result), got kind={cfg.kind!r}, std_ratio={cfg.std_ratio}")
        return cfg


# --------------------------------------------------------------------------- operators


@functools.lru_cache(maxsize=256)
def shift_matrix(n: int, shift: float) -> np.ndarray:
    """(n, n) float64: content moved by ``shift`` pixels along an axis (``out[i] = in(i - shift)``), Keys
    cubic interpolation with edges replicated (the cubic kernel of :mod:`xr_opensr.sensor`)."""
    weights, cols = _shift_taps(n, shift)
    flat = (np.arange(n)[None] * n + cols).ravel()
    m = np.bincount(flat, weights.ravel(), minlength=n * n).reshape(n, n)
    m.flags.writeable = False
    return m


@functools.lru_cache(maxsize=256)
def _shift_taps(n: int, shift: float) -> tuple[np.ndarray, np.ndarray]:
    """The 4 taps of :func:`shift_matrix` per output pixel: (weights (4, n) float64, input indices (4, n))."""
    from ..sensor import _cubic_weights

    t = np.arange(n) - shift
    base = np.floor(t).astype(int)
    weights = _cubic_weights(t - base, -0.5)  # (4, n): taps base-1 .. base+2
    cols = np.clip(base[None] + np.arange(-1, 3)[:, None], 0, n - 1)  # (4, n)
    weights.flags.writeable = cols.flags.writeable = False
    return weights, cols


def _shift_image(x: np.ndarray, shift: tuple[float, float]) -> np.ndarray:
    """``shift_matrix(n, shift[0]) @ x @ shift_matrix(n, shift[1]).T`` of ``x`` (C, n, n) by its 4 taps per axis
    (the matrices are banded: the same values up to float rounding, a fraction of the dense products' time)."""
    n = x.shape[-1]
    (wy, cy), (wx, cx) = _shift_taps(n, shift[0]), _shift_taps(n, shift[1])
    rows = sum(wy[k][None, :, None] * x[:, cy[k], :] for k in range(4))
    return sum(wx[k][None, None, :] * rows[:, :, cx[k]] for k in range(4))


@functools.lru_cache(maxsize=256)
def _look_operator(n_hr: int, scale: int, shift: float) -> Any:
    """(n_hr / scale, n_hr) float64 tensor: degrade after a shift of ``shift`` LR pixels, along an axis.
    (torch, not numpy, for the products: their threads are the task's, ``superresolve(threads=...)``;
    OpenBLAS's own threads stall under dask's concurrent tasks.)"""
    import torch

    return _degrade_operator(n_hr, scale) @ torch.tensor(shift_matrix(n_hr, scale * shift))


@functools.lru_cache(maxsize=16)
def _degrade_operator(n_hr: int, scale: int) -> Any:
    import torch

    from ..sensor import degrade_matrix

    return torch.from_numpy(degrade_matrix(n_hr, scale))


def _apply(ops: tuple[Any, Any], x: Any) -> Any:
    return ops[0] @ x @ ops[1].T


def _robust(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per band of ``values`` (C, n): the median and the robust scale (1.4826 MAD, at least 1e-4)."""
    centre = np.median(values, axis=1)
    return centre, np.maximum(1.4826 * np.median(np.abs(values - centre[:, None]), axis=1), 1e-4)


def _register(ref: np.ndarray, look: np.ndarray, valid: np.ndarray) -> tuple[Any, Any, np.ndarray | None]:
    """(shift, quality, gross): ``look`` registered to ``ref`` on ``valid`` (with a per-band gain and offset);
    when that fails, again without their gross differences (beyond 8 robust scales, dilated: an object, an
    unmasked cloud), which are then ``gross`` (else None)."""
    from ..registration import estimate_shift

    shift, quality = estimate_shift(ref, look, valid, return_quality=True)
    if quality.ok:
        return shift, quality, None
    diff = look - ref
    centre, scale = _robust(diff[:, valid])
    gross = valid & _dilate((np.abs(diff - centre[:, None, None]) > 8 * scale[:, None, None]).any(axis=0))
    shift, quality = estimate_shift(ref, look, valid & ~gross, return_quality=True)
    return shift, quality, gross


#: a patch's fitted gain is used where the look correlates with the reference at least this much (the
#: registration's ``min_correlation``) ...
MIN_CORRELATION = 0.5
#: ... and every band's gain lies in this range; else gain 1 and the median difference as the offset (a flat
#: or noisy patch: a fitted gain would shrink towards 0 with the correlation; a cloud: the change test)
GAIN_RANGE = (0.5, 2.0)
#: reflectance: a reference patch whose every band's standard deviation is at most this is flat (water, a bare
#: field: a few times the sensor's noise), and a look's low correlation with it says nothing
FLAT_STD = 0.005


def _gain_offset(ref: np.ndarray, look: np.ndarray, valid: np.ndarray, shift: tuple[float, float]
                 ) -> tuple[np.ndarray, np.ndarray] | None:
    """The per-band gain and offset (C, 1, 1) with ``look`` moved onto ``ref`` by ``-shift`` times gain plus
    offset ~ ``ref`` on the pixels valid in both: least squares, then once more with Huber weights, where the
    look correlates with the reference (:data:`MIN_CORRELATION`) with a plausible gain (:data:`GAIN_RANGE`);
    else gain 1 and the median difference where the reference patch is flat (:data:`FLAT_STD`: there is
    nothing to correlate), and None where it is not: the look shows something else (a cloud, another scene)."""
    from ..registration import _robust_line, shift_image

    c = ref.shape[0]
    moved = shift_image(look, (-shift[0], -shift[1]))
    ok = valid & np.isfinite(moved).all(axis=0)
    if not ok.any():
        return np.ones((c, 1, 1)), np.zeros((c, 1, 1))
    x, y = moved[:, ok], ref[:, ok]  # (C, n)
    plain = np.ones((c, 1, 1)), np.median(y - x, axis=1)[:, None, None]
    xc, yc = x - x.mean(axis=1, keepdims=True), y - y.mean(axis=1, keepdims=True)
    sxx, syy, sxy = (xc * xc).sum(axis=1), (yc * yc).sum(axis=1), (xc * yc).sum(axis=1)
    if ok.sum() < 16 or float(np.sqrt(syy / ok.sum()).max()) <= FLAT_STD:
        return plain  # too few pixels, or a flat reference: nothing to correlate
    if not (sxx > 1e-20).all() or float(np.mean(sxy / np.sqrt(sxx * np.maximum(syy, 1e-300)))) < MIN_CORRELATION:
        return None
    # least squares, then one Huber step against outliers (objects, clouds): the registration's line fit
    gain, offset = np.array([_robust_line(xb, yb, True, iterations=2) for xb, yb in zip(x, y)]).T
    if not (GAIN_RANGE[0] <= gain.min() and gain.max() <= GAIN_RANGE[1]):
        return plain
    return gain[:, None, None], offset[:, None, None]


def _conjugate_gradients(normal: Any, b: Any, x: Any, iterations: int, inverse_diagonal: Any = None) -> Any:
    """``iterations`` conjugate-gradient steps on ``normal(x) = b`` from ``x`` (a tensor, updated in place);
    preconditioned by ``inverse_diagonal`` (Jacobi: one over the normal operator's diagonal) when given."""
    r = b - normal(x)
    z = r if inverse_diagonal is None else inverse_diagonal * r
    direction = z.clone()
    rz = float((r * z).sum())
    for _ in range(iterations):
        if rz == 0.0:
            break
        q = normal(direction)
        alpha = rz / float((direction * q).sum())
        x += alpha * direction
        r -= alpha * q
        z = r if inverse_diagonal is None else inverse_diagonal * r
        rz, rz_old = float((r * z).sum()), rz
        direction = z + (rz / rz_old) * direction
    return x


def _dilate(mask: np.ndarray) -> np.ndarray:
    out = mask.copy()
    out[1:] |= mask[:-1]
    out[:-1] |= mask[1:]
    grown = out.copy()
    grown[:, 1:] |= out[:, :-1]
    grown[:, :-1] |= out[:, 1:]
    return grown


# --------------------------------------------------------------------------- the reconstruction


def fuse_looks(looks: np.ndarray, x0: np.ndarray, config: MultiDateConfig, *, max_looks: int, scale: int = 4,
               prior_std: np.ndarray | None = None, look_means: Any = None, scene_shifts: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[tuple[float, float] | None]]:
    """One patch: ``looks`` (L, C, p, p) LR reflectance (look 0 the reference, NaN nodata), ``x0`` (C, sp, sp)
    its single-date mean (finite where the reference is valid); ``look_means``: the single-date means of the
    looks, (L, C, sp, sp) (NaN where not computed) or a function of a list of look indices giving theirs
    (n, C, sp, sp) (called once, for the looks used only), moved onto the reference's grid and radiometry and
    averaged with ``x0`` over the looks used at each pixel into the prior's mean (the same detail whatever the
    date asked for). ``scene_shifts`` (L, 2): each look's scene-level offset from the reference (LR pixels,
    NaN unknown; :func:`xr_opensr.looks.look_shifts`), used where known (:func:`_register_looks`).
    Returns (mean (C, sp, sp) float64, looks used (p, p), looks left out as changed (p, p),
    RMS residual of the used looks (p, p), each look's shift or None where it was left out)."""
    import torch

    n_looks, c, p, _ = looks.shape
    ref = looks[0].astype(np.float64)
    valid0 = np.isfinite(ref).all(axis=0)
    x0 = np.where(np.isfinite(x0), x0, 0.0).astype(np.float64)
    t0 = torch.from_numpy(x0)
    n_hr = scale * p
    used = valid0.astype(np.int32)
    # 1. each look registered (shift, gain, offset) or left out
    registered, shifts, changed = _register_looks(looks, ref, valid0, config.min_valid, scene_shifts)
    # 2. change: residuals against x0 moved onto each look (one batched product), the looks used per pixel
    terms_y, terms_w, terms_ops, taken = [np.where(valid0, ref, 0.0)], [valid0.astype(np.float64)], [(0.0, 0.0)], []
    spread = None
    if registered:
        spread = _change_test(looks, registered, t0, prior_std, config, max_looks, used, changed,
                              (terms_y, terms_w, terms_ops, taken))
    if not taken:
        return x0, used, changed, np.zeros((p, p)), shifts
    # 3. the prior's mean: the single-date means of the looks used, moved onto the reference and averaged
    if look_means is not None:
        t0 = torch.from_numpy(_shared_prior(x0, taken, look_means, scale))
    # 4. data: each look's pixels with the inverse of the looks' robust residual variance (per band); the prior:
    # x0, with the inverse of the single-date variance per pixel times prior_weight (or mu times the data's).
    # Conjugate gradients on the normal equations, every look in one batched product (:func:`_cg_dtype`).
    inv_noise = 1.0 / spread[:, None, None] ** 2
    if prior_std is not None and config.prior_weight > 0:
        var0 = np.maximum(np.where(np.isfinite(prior_std), prior_std, 1.0).astype(np.float64), 1e-4) ** 2
        mu = config.prior_weight / var0
    else:
        mu = np.broadcast_to(config.mu * inv_noise, (c, n_hr, n_hr))
    ops64 = _stacked_operators(terms_ops, n_hr, scale, torch.float64)
    y = torch.from_numpy(np.ascontiguousarray(np.stack(terms_y).transpose(0, 2, 1, 3)))  # (T, p, C, p)
    w_plain = torch.from_numpy(np.stack(terms_w)[:, :, None, :])  # (T, p, 1, p)
    w = w_plain * torch.from_numpy(inv_noise.transpose(1, 0, 2)[None])  # (T, p, C, p)
    mu_t = torch.from_numpy(np.ascontiguousarray(mu.transpose(1, 0, 2)))  # (n, C, n)
    start = t0.permute(1, 0, 2).contiguous()  # (n, C, n): the HR image, rows first
    fast = _cg_dtype()  # the normal operator's products (the iterates stay float64)
    ops, w_fast = (ops64, w) if fast == torch.float64 else (_stacked_operators(terms_ops, n_hr, scale, fast), w.to(fast))
    band = _band(ops[0], len(terms_ops), p, n_hr, scale) if len(terms_ops) >= _BAND_LOOKS else None

    def normal(x: Any) -> Any:
        data = _backward(ops, w_fast * _forward(ops, x.reshape(n_hr, c * n_hr).to(fast), band), band)
        return mu_t * x + data.to(torch.float64).reshape(n_hr, c, n_hr)

    b = mu_t * start + _backward(ops64, w * y).reshape(n_hr, c, n_hr)
    inverse_diagonal = None
    if config.preconditioner == "jacobi":  # the diagonal: mu plus each look's squared operator weighted
        squared = tuple(op * op for op in ops64)
        diagonal = mu_t + _backward(squared, w).reshape(n_hr, c, n_hr)  # 0 only where nothing constrains a pixel
        inverse_diagonal = torch.where(diagonal > 0, 1.0 / diagonal.clamp_min(1e-300), 1.0)
    x = _conjugate_gradients(normal, b, start.clone(), config.iterations, inverse_diagonal)
    sq = (w_plain * (y - _forward(ops64, x.reshape(n_hr, c * n_hr))) ** 2).mean(dim=2).sum(dim=0)
    rms = np.sqrt(sq.numpy() / np.maximum(used, 1))
    x = x.permute(1, 0, 2).numpy().astype(np.float64)
    return np.where(_up(used <= 1, scale), x0, x), used, changed, rms, shifts


def _change_test(looks: np.ndarray, registered: list[tuple], t0: Any, prior_std: np.ndarray | None,
                 config: MultiDateConfig, max_looks: int, used: np.ndarray, changed: np.ndarray,
                 terms: tuple[list, list, list, list]) -> np.ndarray:
    """Step 2 of :func:`fuse_looks`: each registered look's residual against ``x0`` (``t0``) moved onto it; its
    pixels beyond ``change_threshold`` robust scales left out and added to ``changed``, the others taken while
    ``used`` < ``max_looks`` (both (p, p), updated in place) and appended to ``terms`` (looks' data, weights,
    shifts, and (look index, shift, gain, offset, pixels used)). Returns the robust residual scale per band."""
    import torch

    terms_y, terms_w, terms_ops, taken = terms
    c, n_hr = t0.shape[0], t0.shape[-1]
    scale = n_hr // looks.shape[-1]
    ops = _stacked_operators([s for _, s, _, _, _ in registered], n_hr, scale, torch.float64)
    predicted = _forward(ops, t0.permute(1, 0, 2).reshape(n_hr, c * n_hr)).numpy()  # (T, p, C, p)
    expected = None  # the single-date std moved onto each look: where x0 itself is unsure, its prediction is too
    if config.change_std > 0 and prior_std is not None:
        u = np.where(np.isfinite(prior_std), prior_std, 0.0).astype(np.float64)
        expected = config.change_std * _forward(ops, torch.from_numpy(u).permute(1, 0, 2).reshape(n_hr, c * n_hr)
                                                ).numpy().transpose(0, 2, 1, 3)  # (T, C, p, p)
    candidates = []
    for (j, shift, gain, offset, valid), pred in zip(registered, predicted):
        corrected = looks[j].astype(np.float64) * gain + offset
        candidates.append((j, shift, gain, offset, corrected, valid,
                           np.where(valid, corrected - pred.transpose(1, 0, 2), 0.0)))
    centre, spread = _robust(np.concatenate([r[:, v] for *_, v, r in candidates], axis=1))
    for t, (j, shift, gain, offset, corrected, valid, residual) in enumerate(candidates):
        scale_t = spread[:, None, None] if expected is None else np.hypot(spread[:, None, None], expected[t])
        z = np.sqrt((((residual - centre[:, None, None]) / scale_t) ** 2).mean(axis=0))
        bad = valid & _dilate(valid & (z > config.change_threshold))
        take = valid & ~bad & (used < max_looks)
        changed += bad
        used += take
        if take.any():
            terms_y.append(np.where(take, corrected, 0.0))
            terms_w.append(take.astype(np.float64))
            terms_ops.append(shift)
            taken.append((j, shift, gain, offset, take))
    return spread


def _register_looks(looks: np.ndarray, ref: np.ndarray, valid0: np.ndarray, min_valid: float,
                    scene_shifts: np.ndarray | None = None
                    ) -> tuple[list[tuple], list[tuple[float, float] | None], np.ndarray]:
    """Step 1 of :func:`fuse_looks`: every look 1.. registered to ``ref`` or left out. A look whose scene-level
    shift is known (``scene_shifts`` (L, 2), finite) takes it, with the patch's own per-band gain and offset
    (:func:`_gain_offset`; a look uncorrelated with a textured reference is left out, all its valid pixels
    counted as changed; where part of it disagrees, an unmasked cloud or a change, the change test of step 2
    leaves those pixels out); the others are registered on the patch (:func:`_register`), or left out.
    Returns the registered ones as (look index, shift, gain (C, 1, 1), offset (C, 1, 1), valid), each look's
    shift (None: left out), and per LR pixel the looks left out where they disagree (an unregistrable look's
    gross differences; an uncorrelated look: all its valid pixels)."""
    p = ref.shape[-1]
    registered, shifts, changed = [], [(0.0, 0.0)], np.zeros((p, p), dtype=np.int32)
    for j in range(1, looks.shape[0]):
        look = looks[j].astype(np.float64)
        valid = np.isfinite(look).all(axis=0) & valid0
        if valid.sum() < max(16, min_valid * valid0.sum()):
            shifts.append(None)
            continue
        known = None if scene_shifts is None else scene_shifts[j]
        if known is not None and np.isfinite(known).all():
            shift = (float(known[0]), float(known[1]))
            fit = _gain_offset(ref, look, valid, shift)
            if fit is None:  # uncorrelated with a textured reference: left out where valid, counted as changed
                changed += valid
                shifts.append(None)
                continue
            registered.append((j, shift, *fit, valid))
            shifts.append(shift)
            continue
        shift, quality, gross = _register(ref, look, valid)
        if not quality.ok:  # left out; where it disagrees (uncorrelated: all of it) counted as changed
            changed += valid if quality.reason == "low correlation" else gross
            shifts.append(None)
            continue
        registered.append((j, (float(shift[0]), float(shift[1])), quality.gain[:, None, None],
                           quality.offset[:, None, None], valid))
        shifts.append((float(shift[0]), float(shift[1])))
    return registered, shifts, changed


def _shared_prior(x0: np.ndarray, taken: list[tuple], look_means: Any, scale: int) -> np.ndarray:
    """Step 3 of :func:`fuse_looks`: ``x0`` averaged per pixel with the single-date means of the looks used
    (``taken``: (look index, shift, gain, offset, pixels used)), each moved onto the reference's grid and
    radiometry; ``look_means`` as in :func:`fuse_looks`."""
    p = x0.shape[-1] // scale
    index = [j for j, *_ in taken]
    means = look_means(index) if callable(look_means) else look_means[index]
    prior_sum, prior_n = x0.copy(), np.ones((p, p))
    for (_, shift, gain, offset, take), mean_j in zip(taken, means):
        if not np.isfinite(mean_j).all():  # (as the dense products had it: a NaN made the whole look's prior NaN)
            continue
        prior = _shift_image(mean_j.astype(np.float64) * gain + offset, (-scale * shift[0], -scale * shift[1]))
        ok = take & np.isfinite(prior).all(axis=0).reshape(p, scale, p, scale).all(axis=(1, 3))
        prior_sum += np.where(_up(ok, scale), np.nan_to_num(prior), 0.0)
        prior_n += ok
    return prior_sum / _up(prior_n, scale)


#: the dtype of the conjugate gradients' normal-operator products (float32: half the time of float64)
_CG_DTYPE_NAME = "float32"


def _cg_dtype() -> Any:
    import torch

    return getattr(torch, _CG_DTYPE_NAME)


def _stacked_operators(shifts: list[tuple[float, float]], n_hr: int, scale: int, dtype: Any) -> tuple[Any, Any, Any]:
    """The looks' operators stacked for batched products: (rows (T p, n), columns transposed (T, n, p),
    columns (T, p, n)) of the looks of ``shifts`` (LR pixels)."""
    import torch

    rows = torch.cat([_look_operator(n_hr, scale, dy) for dy, _ in shifts]).to(dtype)
    cols = torch.stack([_look_operator(n_hr, scale, dx) for _, dx in shifts]).to(dtype)
    return rows, cols.transpose(1, 2).contiguous(), cols


def _forward(ops: tuple[Any, Any, Any], x: Any, band: tuple | None = None) -> Any:
    """HR ``x`` (n, C n) (rows, then band and column) -> every look (T, p, C, p); with ``band``
    (:func:`_band` of the rows), the rows' product over their band only."""
    rows, cols_t, _ = ops
    t, n, p = cols_t.shape
    if band is None:
        along_rows = rows @ x  # (T p, C n)
    else:
        coef, pad, total, width, step = band
        padded = x.new_zeros(total, x.shape[1])
        padded[pad:pad + n] = x
        along_rows = (coef @ padded.unfold(0, width, step)[:p].transpose(1, 2)).transpose(0, 1)  # (T, p, C n)
    return (along_rows.reshape(t, -1, n) @ cols_t).reshape(t, p, -1, p)


#: the fewest looks whose normal operator's row products run over bands (:func:`_band`; fewer: dense, faster)
_BAND_LOOKS = 6


def _band(rows: Any, t: int, p: int, n: int, step: int) -> tuple | None:
    """The looks' row operators ``rows`` (T p, n) as bands for :func:`_forward`: (coefficients (p, T, width),
    zero rows padded before the HR rows, padded length, width, step), LR row ``i``'s band starting at padded
    row ``step i``; None where the band is not narrower than ``n`` (a dense product then)."""
    import torch

    r = rows.reshape(t, p, n)
    lr, hr = torch.nonzero((r != 0).any(dim=0), as_tuple=True)
    if not len(lr):
        return None
    rel = hr - step * lr
    lo, hi = min(int(rel.min()), 0), int(rel.max())
    width = -(-(hi - lo + 1) // step) * step
    if width >= n:
        return None
    pad = -lo
    total = max(step * (p - 1) + width, n + pad)
    padded = r.new_zeros(t, p, total)
    padded[:, :, pad:pad + n] = r
    coef = padded.unfold(2, width, step)  # (T, p, windows, width): LR row i's own window is i
    coef = coef[:, torch.arange(p), torch.arange(p)]  # (T, p, width)
    return coef.permute(1, 0, 2).contiguous(), pad, total, width, step


def _backward(ops: tuple[Any, Any, Any], r: Any, band: tuple | None = None) -> Any:
    """The adjoint of :func:`_forward`, summed over the looks: (T, p, C, p) -> (n, C n); with ``band``, the
    rows' product over their band only (each LR row's band added into its HR rows)."""
    import torch

    rows, _, cols = ops
    t, p, n = cols.shape
    z = r.reshape(t, -1, p) @ cols  # (T, p C, n)
    if band is None:
        return rows.T @ z.reshape(t * p, -1)
    coef, pad, total, width, step = band
    parts = coef.transpose(1, 2) @ z.reshape(t, p, -1).transpose(0, 1)  # (p, width, C n)
    index = (step * torch.arange(p)[:, None] + torch.arange(width)[None]).reshape(-1)
    out = z.new_zeros(total, parts.shape[-1]).index_add_(0, index, parts.reshape(p * width, -1))
    return out[pad:pad + n]


class MultiDateModel:
    """The multi-date model: :attr:`base` (model v2) and the multi-look reconstruction of ``config``."""

    def __init__(self, base: Any, config: MultiDateConfig) -> None:
        if not hasattr(base, "mean_and_spread"):
            raise InputError(f"the multi-date model builds on a model with a mean network (model v2), got "
                             f"{base.info.name!r}")
        self.base, self.config = base, config
        _INSTANCES.add(self)

    @property
    def info(self) -> ModelInfo:
        b = self.base.info
        return ModelInfo(name=self.config.name, version=self.config.version, bands=b.bands, scale=b.scale,
                         patch=b.patch, overlap=b.overlap, patch_multiple=b.patch_multiple,
                         core_dims=(LOOK_DIM, "band", "y", "x"), outputs=("mean", "std"),
                         extra_outputs=("looks", "changed"), reference_first=True, context="look_shift",
                         mean_without_samples=True, std_scale=b.std_scale,
                         consistency=b.consistency, trained=b.trained,
                         attrs=(("base_model", b.name), ("base_model_version", b.version),
                                ("registration", "each look's scene-level sub-pixel shift to the date asked for "
                                                 "(look_shift) with a per-band gain/offset per patch; where the "
                                                 "scene-level shift is unknown, per patch "
                                                 "(xr_opensr.registration)")))

    @property
    def device(self) -> Any:
        return self.base.device

    def place(self, device: Any = "auto", dtype: Any = None) -> MultiDateModel:
        self.base.place(device, dtype)
        return self

    def prepare_inference(self) -> MultiDateModel:
        if hasattr(self.base, "prepare_inference"):
            self.base.prepare_inference()
        return self

    def valid(self, patches: np.ndarray) -> np.ndarray:
        """(N, C, P, P): where the date asked for (look 0) is valid in every band: its nodata stays nodata."""
        ok = np.isfinite(patches[:, 0]).all(axis=1)[:, None]
        return np.broadcast_to(ok, (patches.shape[0], patches.shape[2], *patches.shape[-2:]))

    def run(self, patches: np.ndarray, seeds: np.ndarray, options: SampleOptions,
            context: np.ndarray | None = None) -> np.ndarray:
        """(N, L, C, P, P) looks -> (N, 4, C, sP, sP): mean, std, looks used, looks left out as changed;
        ``context`` (N, L, 2): each look's scene-level offset from its date (``info.context``), or None."""
        import torch

        if options.return_samples:
            raise InputError("return_samples=True with a multi-date model: it gives a mean and a standard deviation, "
                             "not samples; use return_samples=False")
        n, _, c, p, _ = patches.shape
        s = self.info.scale
        max_looks = options.looks or self.config.looks
        out = np.full((n, 4, c, s * p, s * p), np.nan, dtype=np.float32)
        out[:, 2:] = 0
        ref = np.ascontiguousarray(patches[:, 0], dtype=np.float32)
        invalid = ~np.isfinite(ref).all(axis=1)
        todo = np.flatnonzero(~invalid.all(axis=(1, 2)))
        if not len(todo):
            return out
        spread = options.samples >= 2 or self.config.prior_weight > 0
        if self.config.shared_prior:  # a date's patch is another date's look: computed once, kept by content
            mean0, std0 = self._single_date(ref[todo], spread)
        else:
            mean0, std0 = self.base.mean_and_spread(torch.from_numpy(ref[todo]), torch.from_numpy(invalid[todo]),
                                                    spread=spread)
        ratio = np.asarray(self.config.std_ratio)
        std0 = std0 * np.float32(self.base.info.std_scale)  # calibrated, as the single-date model gives it
        for k, i in enumerate(todo):
            means = functools.partial(self._look_means, patches[i], spread) if self.config.shared_prior else None
            mean, used, changed, rms, _ = fuse_looks(patches[i], mean0[k], self.config, max_looks=max_looks, scale=s,
                                                     prior_std=std0[k], look_means=means,
                                                     scene_shifts=None if context is None else context[i])
            hr = _up(invalid[i], s)
            out[i, 0] = np.where(hr, np.nan, np.maximum(mean, 0.0))
            if options.samples >= 2:
                factor = ratio[np.clip(used, 1, len(ratio)) - 1]
                std = std0[k] * _up(factor, s) + self.config.disagreement * _up(rms, s)
                out[i, 1] = np.where(hr, np.nan, std)
            elif options.samples == 1:
                out[i, 1] = np.where(hr, np.nan, 0.0)
            out[i, 2], out[i, 3] = _up(used, s), _up(changed, s)
        return out


    #: bytes of single-date results kept per model (least recently used first out, by the patch's content: the
    #: looks of a date are other dates' patches, whose mean and spread are then computed once, as a date or as a
    #: look, while they are among the last ones; 128 MiB: 256 patches of 32 x 32 LR pixels with their spread,
    #: whatever the series' length)
    MEANS_KEPT_BYTES: ClassVar[int] = 128 * 2**20

    def _look_means(self, looks: np.ndarray, spread: bool, which: list[int]) -> np.ndarray:
        """(len(which), C, sP, sP): the single-date mean of the looks ``which`` of one patch's ``looks`` (L, C, P, P)
        (NaN where nodata), their spread computed too with ``spread`` (for when they are a date's patch)."""
        return self._single_date(np.ascontiguousarray(looks[which], dtype=np.float32), spread)[0]

    def _single_date(self, x: np.ndarray, spread: bool) -> tuple[np.ndarray, np.ndarray]:
        """The base model's (mean, uncalibrated spread) of the LR patches ``x`` (B, C, P, P) float32, NaN nodata,
        each the network's result for that patch alone (batch-invariant; the spread zeros without ``spread``),
        kept by content: a patch seen before (as a date or as a look) is not computed again."""
        import torch

        keys = [_key(xi) for xi in x]
        with _MEANS_LOCK:
            kept = self.__dict__.setdefault("_means_kept", collections.OrderedDict())
            found = [kept.get(key) for key in keys]
            found = [f if f is not None and (f[2] or not spread) else None for f in found]
            for key, f in zip(keys, found):
                if f is not None:
                    kept.move_to_end(key)
        todo = [i for i, f in enumerate(found) if f is None and i == keys.index(keys[i])]
        if todo:
            xs = x[todo]
            invalid = ~np.isfinite(xs).all(axis=1)
            mean, std = self.base.mean_and_spread(torch.from_numpy(xs), torch.from_numpy(invalid), spread=spread)
            new = {keys[i]: (np.array(m), np.array(d), spread) for i, m, d in zip(todo, mean, std)}  # copies
            with _MEANS_LOCK:
                for key, value in new.items():
                    kept[key] = value
                    kept.move_to_end(key)
                per_entry = 2 * mean[0].nbytes
                while len(kept) > max(1, self.MEANS_KEPT_BYTES // per_entry):
                    kept.popitem(last=False)
            found = [new[key] if f is None else f for f, key in zip(found, keys)]
        return np.stack([f[0] for f in found]), np.stack([f[1] for f in found])


_MEANS_LOCK = threading.Lock()
_INSTANCES: weakref.WeakSet = weakref.WeakSet()


def forget_kept() -> None:
    """Empty every multi-date model's kept single-date results in this process (benchmarks: each timed run
    starts without them)."""
    with _MEANS_LOCK:
        for model in list(_INSTANCES):
            model.__dict__.pop("_means_kept", None)


def _key(look: np.ndarray) -> bytes:
    """A look's patch by content (its float32 values, NaN included)."""
    a = np.ascontiguousarray(look, dtype=np.float32)
    return hashlib.blake2b(a.tobytes(), digest_size=20, person=str(a.shape).encode()[:16]).digest()


def _up(a: np.ndarray, s: int) -> np.ndarray:
    """(p, p) per LR pixel -> (s p, s p)."""
    return np.repeat(np.repeat(a, s, axis=0), s, axis=1)
