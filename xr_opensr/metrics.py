"""Quality metrics for super-resolved Sentinel-2 reflectance: numpy first, xarray too.

Every function takes numpy arrays laid out ``(..., band, y, x)`` (reflectance, float) or
:class:`xarray.DataArray` objects with a ``band`` dimension (optional) and spatial dims ``y``/``x``.

* numpy: the statistic pools every leading axis (e.g. a batch ``(N, 4, H, W)``) and returns a
  Python ``float``; with ``per_band=True`` an array ``(band,)``.
* xarray: the band and spatial dims are reduced, every other dim (``time``, ...) is kept; the
  result is a DataArray (0-d if nothing is kept), with ``band`` kept if ``per_band=True``.

NaN marks nodata: a pixel that is NaN in either input is ignored. Nothing here imports torch,
except :func:`lpips`, which imports it (and ``lpips`` / ``stlpips-pytorch``) when called.

Conventions: reflectance in [0, 1] (``data_range=1.0``); PSNR in dB from the MSE pooled over all
valid values; SSIM after Wang et al. (2004) with an 11-tap Gaussian window (sigma 1.5 px, K1 0.01,
K2 0.03, borders of 5 px excluded, as ``skimage.metrics.structural_similarity(gaussian_weights=True)``);
spectral angle (SAM) in degrees.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import warnings
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

__all__ = [
    "area_downsample",
    "bicubic_upsample",
    "gaussian_filter",
    "gradient_magnitude",
    "lpips",
    "lpips_network",
    "psnr",
    "reflectance_consistency",
    "spectral_angle",
    "ssim",
    "uncertainty_calibration",
]

ArrayLike = Any  # numpy array, anything np.asarray takes, or an xarray.DataArray

_Y_NAMES = ("y", "lat", "latitude", "northing", "row")
_X_NAMES = ("x", "lon", "longitude", "easting", "col")
_BAND_NAMES = ("band", "bands", "channel", "channels", "variable", "wavelength")
#: the RGB bands LPIPS sees, in R, G, B order
LPIPS_BANDS = ("B04", "B03", "B02")
#: LPIPS networks this module builds (none of them downloads anything)
LPIPS_NETS = {
    "auto": "lpips-alex if the ImageNet AlexNet is in $TORCH_HOME/hub/checkpoints, else stlpips-alex",
    "lpips-alex": "LPIPS v0.1, AlexNet ImageNet trunk from the local torch hub cache, linear layers from lpips",
    "lpips-vgg": "LPIPS v0.1, VGG16 ImageNet trunk from the local torch hub cache, linear layers from lpips",
    "stlpips-alex": "shift-tolerant LPIPS (AlexNet), all weights shipped inside stlpips-pytorch",
    "stlpips-vgg": "shift-tolerant LPIPS (VGG16), all weights shipped inside stlpips-pytorch",
}
_TRUNK_FILES = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth"}


# --------------------------------------------------------------------------- resampling


def area_downsample(hr: ArrayLike, factor: int = 4) -> ArrayLike:
    """Mean over non-overlapping ``factor x factor`` blocks of the last two axes.

    This is the plain box (area) average that relates a 2.5 m SR image to its 10 m pixels. An LR
    pixel is NaN if any HR pixel it covers is NaN.

    Parameters
    ----------
    hr : array (..., H, W) with H and W multiples of ``factor``, or a DataArray with spatial dims
        (its coordinates become the block centres; a CRS written with rioxarray gets the coarser
        transform).
    factor : block size in pixels (4 for 2.5 m -> 10 m).

    Returns
    -------
    array (..., H / factor, W / factor), float32 for float32/integer input (float64 stays float64);
    a DataArray for a DataArray.
    """
    factor = _positive_factor(factor)
    if isinstance(hr, xr.DataArray):
        y, x = _spatial_dims(hr)
        moved = hr.transpose(..., y, x)
        values = area_downsample(moved.values, factor)
        coords = {k: v for k, v in moved.coords.items() if y not in v.dims and x not in v.dims}
        for dim in (y, x):
            if dim in moved.coords:
                coords[dim] = np.asarray(moved[dim].values, np.float64).reshape(-1, factor).mean(axis=1)
        out = xr.DataArray(values, dims=moved.dims, coords=coords, attrs=hr.attrs, name=hr.name)
        return _rewrite_transform(out.transpose(*hr.dims), hr)
    arr = _float_array(hr)
    h, w = arr.shape[-2:]
    _check_divisible(h, w, factor)
    blocks = arr.reshape(*arr.shape[:-2], h // factor, factor, w // factor, factor)
    return blocks.mean(axis=(-3, -1), dtype=np.float64).astype(arr.dtype)


def bicubic_upsample(lr: ArrayLike, factor: int = 4, *, a: float = -0.5) -> ArrayLike:
    """Cubic-convolution (Keys 1981) upsampling of the last two axes by an integer ``factor``.

    Pixel centres are aligned as in ``torch.nn.functional.interpolate(..., align_corners=False)``
    (half-pixel offsets) and edges are replicated. ``a=-0.5`` is Keys' kernel (PIL, Matlab);
    ``a=-0.75`` reproduces torch's ``mode="bicubic"``. NaN pixels are filled from their valid
    neighbours before interpolating and the ``factor x factor`` block of each NaN LR pixel is NaN in
    the output, so nodata neither spreads nor shrinks.

    Parameters
    ----------
    lr : array (..., h, w) reflectance, or a DataArray with spatial dims (coordinates of the finer
        grid are computed; a rioxarray CRS gets the finer transform).

    Returns
    -------
    array (..., factor * h, factor * w) float32 (float64 input stays float64).
    """
    factor = _positive_factor(factor)
    if isinstance(lr, xr.DataArray):
        y, x = _spatial_dims(lr)
        moved = lr.transpose(..., y, x)
        values = bicubic_upsample(moved.values, factor, a=a)
        coords = {k: v for k, v in moved.coords.items() if y not in v.dims and x not in v.dims}
        coords[y] = _finer_axis(moved, y, factor)
        coords[x] = _finer_axis(moved, x, factor)
        out = xr.DataArray(values, dims=moved.dims, coords=coords, attrs=lr.attrs, name=lr.name)
        return _rewrite_transform(out.transpose(*lr.dims), lr)
    arr = _float_array(lr)
    nan = np.isnan(arr)
    filled = _fill_nan(arr) if nan.any() else arr
    out = _cubic_axis(_cubic_axis(filled, factor, a, axis=-2), factor, a, axis=-1)
    if nan.any():
        out[np.repeat(np.repeat(nan, factor, axis=-2), factor, axis=-1)] = np.nan
    return out.astype(arr.dtype, copy=False)


def gaussian_filter(img: ArrayLike, sigma: float, *, truncate: float = 4.0) -> np.ndarray:
    """Separable Gaussian filter over the last two axes, NaN-aware (normalised convolution).

    The kernel has radius ``int(truncate * sigma + 0.5)`` and edges are mirrored, as
    ``scipy.ndimage.gaussian_filter(mode="reflect")`` (identical results on finite input). NaN
    pixels are left out of every weighted mean (the weights of the valid pixels are renormalised)
    and stay NaN in the output.

    Parameters
    ----------
    img : array (..., H, W).
    sigma : standard deviation of the kernel in pixels (0: no filtering).

    Returns
    -------
    array (..., H, W), float32 for float32/integer input (float64 stays float64).
    """
    arr = _float_array(img)
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0, got {sigma}")
    if sigma == 0:
        return arr.copy()
    nan = np.isnan(arr)
    if not nan.any():
        return _separable(arr, _gauss1d(sigma, truncate))
    valid = (~nan).astype(arr.dtype)
    kernel = _gauss1d(sigma, truncate)
    num = _separable(np.where(nan, 0, arr), kernel)
    den = _separable(valid, kernel)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = num / den
    out[nan] = np.nan
    return out


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
        u = p / np.linalg.norm(p, axis=2, keepdims=True)
        v = t / np.linalg.norm(t, axis=2, keepdims=True)
        angle = 2.0 * np.arctan2(np.linalg.norm(u - v, axis=2), np.linalg.norm(u + v, axis=2))
        return np.degrees(np.nanmean(angle, axis=(1, 2, 3)))

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


def _trunk_cache(trunk: str) -> Path:
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints" / _TRUNK_FILES[trunk]


def _resolve_lpips_net(net: str) -> str:
    if net not in LPIPS_NETS:
        raise ValueError(f"unknown LPIPS net {net!r}; choose one of {sorted(LPIPS_NETS)}")
    if net != "auto":
        return net
    try:
        cached = _trunk_cache("alex").is_file() and importlib.util.find_spec("lpips") is not None
    except ImportError as err:
        raise ImportError("lpips needs torch: pip install 'xr-opensr[train]'") from err
    return "lpips-alex" if cached else "stlpips-alex"


def lpips_network(name: str, device: str = "cpu"):
    """A fresh, frozen (eval mode, no gradients) LPIPS network ``name`` of :data:`LPIPS_NETS` (not "auto").

    The module that :func:`lpips` uses, for callers that need it as a ``torch.nn.Module`` (e.g. a
    perceptual training loss). It takes two (B, 3, H, W) tensors in [-1, 1] and returns (B, 1, 1, 1)
    distances. Never downloads; raises FileNotFoundError / ImportError as :func:`lpips` explains.
    """
    if name not in LPIPS_NETS or name == "auto":
        raise ValueError(f"unknown LPIPS net {name!r}; choose one of {sorted(set(LPIPS_NETS) - {'auto'})}")
    return _lpips_model(name, device)


@functools.lru_cache(maxsize=4)
def _shared_lpips_model(name: str, device: str):
    """The instance :func:`lpips` reuses; never handed out (callers may move or wrap what they get)."""
    return _lpips_model(name, device)


def _lpips_model(name: str, device: str = "cpu"):
    import torch

    family, trunk = name.split("-")
    if family == "lpips":
        cache = _trunk_cache(trunk)
        if not cache.is_file():
            raise FileNotFoundError(
                f"LPIPS net {name!r} needs the torchvision ImageNet weights at {cache} (never downloaded "
                "here); put the file there, or call lpips(..., net='stlpips-alex')"
            )
        try:
            import lpips as lpips_pkg
        except ImportError as err:
            raise ImportError(f"LPIPS net {name!r} needs the lpips package: pip install 'xr-opensr[train]'") from err
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            # pnet_rand=True: torchvision builds the trunk without asking for a download
            model = lpips_pkg.LPIPS(pretrained=True, net=trunk, version="0.1", pnet_rand=True, verbose=False)
        state = torch.load(cache, map_location="cpu", weights_only=True)
        features = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
        mapped = {}
        for slice_name, module in model.net.named_children():
            for idx in dict(module.named_children()):
                for key, value in features.items():
                    if key.split(".")[0] == idx:
                        mapped[f"{slice_name}.{key}"] = value
        model.net.load_state_dict(mapped, strict=True)
    else:
        if importlib.util.find_spec("stlpips_pytorch") is None:
            raise ImportError(f"LPIPS net {name!r} needs stlpips-pytorch: pip install 'xr-opensr[train]'")
        with _PlaceholderModules({"torchsummary": ["summary"], "IPython": ["embed"]}):
            from stlpips_pytorch import stlpips
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            model = stlpips.LPIPS(pretrained=False, net=trunk, variant="shift_tolerant", pnet_rand=True,
                                  verbose=False, eval_mode=True)
        weights = Path(stlpips.__file__).parent / "weights" / "vST0.0" / f"{trunk}_shift_tolerant.pth"
        result = model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True), strict=False)
        missing = [k for k in result.missing_keys if not k.startswith("lins.")]  # lins.N alias linN
        if missing or result.unexpected_keys:
            raise RuntimeError(f"{weights} does not fit ST-LPIPS {trunk}: missing {missing}, "
                               f"unexpected {result.unexpected_keys}")
    for param in model.parameters():
        param.requires_grad_(False)
    return model.eval().to(device)


class _PlaceholderModules:
    """Make the unused, undeclared imports of stlpips-pytorch 0.0.2 importable while it is imported."""

    def __init__(self, names: dict[str, list[str]]) -> None:
        self.names, self.added = names, []

    def __enter__(self) -> None:
        import sys
        import types

        for name, attrs in self.names.items():
            if name in sys.modules or importlib.util.find_spec(name) is not None:
                continue
            module = types.ModuleType(name)
            for attr in attrs:
                setattr(module, attr, _unavailable(name, attr))
            sys.modules[name] = module
            self.added.append(name)

    def __exit__(self, *exc: object) -> None:
        import sys

        for name in self.added:
            sys.modules.pop(name, None)


def _unavailable(module: str, attr: str) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"{module}.{attr} is a placeholder (not installed)")

    return call


# --------------------------------------------------------------------------- layout helpers


def _apply(kernel: Callable[[np.ndarray, np.ndarray], np.ndarray], pred: ArrayLike, target: ArrayLike, *,
           per_band: bool, name: str, units: str, need_band: bool = False):
    """Run ``kernel`` on (K, N, band, y, x) float64 arrays; K groups are kept, N items pooled.

    ``kernel`` returns (K,) or, with ``per_band``, (K, band).
    """
    if isinstance(pred, xr.DataArray) or isinstance(target, xr.DataArray):
        return _apply_xarray(kernel, pred, target, per_band=per_band, name=name, units=units,
                             need_band=need_band)
    p, t = np.asarray(pred, dtype=np.float64), np.asarray(target, dtype=np.float64)
    if p.shape != t.shape:
        raise ValueError(f"{name}: pred {p.shape} and target {t.shape} must have the same shape")
    if p.ndim < 2 or (need_band and p.ndim < 3):
        want = "(..., band, y, x)" if need_band else "(..., y, x)"
        raise ValueError(f"{name}: expected arrays {want}, got shape {p.shape}")
    if p.ndim == 2:
        p, t = p[None], t[None]
    shape = (1, -1, *p.shape[-3:])
    out = kernel(p.reshape(shape), t.reshape(shape))[0]
    return out if per_band else float(out)


def _apply_xarray(kernel, pred, target, *, per_band, name, units, need_band):
    if not (isinstance(pred, xr.DataArray) and isinstance(target, xr.DataArray)):
        raise TypeError(f"{name}: give two DataArrays or two arrays, got {type(pred).__name__} and "
                        f"{type(target).__name__}")
    y, x = _spatial_dims(pred)
    band = _band_dim(pred)
    if band is None and need_band:
        raise ValueError(f"{name}: the DataArray has no band dim (dims {pred.dims})")
    if set(pred.dims) != set(target.dims):
        raise ValueError(f"{name}: pred dims {pred.dims} and target dims {target.dims} differ")
    core = [d for d in (band, y, x) if d is not None]
    keep = [d for d in pred.dims if d not in core]
    p = pred.transpose(*keep, *core).values.astype(np.float64)
    t = target.transpose(*keep, *core).values.astype(np.float64)
    if p.shape != t.shape:
        raise ValueError(f"{name}: pred {dict(pred.sizes)} and target {dict(target.sizes)} differ in size")
    if band is None:
        p, t = p[..., None, :, :], t[..., None, :, :]
    lead = p.shape[:-3]
    k = int(np.prod(lead)) if lead else 1
    out = kernel(p.reshape(k, 1, *p.shape[-3:]), t.reshape(k, 1, *t.shape[-3:]))
    dims: list[Hashable] = list(keep)
    coords = {d: pred[d] for d in keep if d in pred.coords}
    if per_band:
        out = out.reshape(*lead, -1)
        if band is not None:
            dims.append(band)
            if band in pred.coords:
                coords[band] = pred[band]
        else:
            out = out[..., 0]
    else:
        out = out.reshape(lead)
    return xr.DataArray(out, dims=dims, coords=coords, name=name, attrs={"units": units})


@contextlib.contextmanager
def _quiet():
    """Silence the warnings of empty (all-NaN) reductions: those give NaN, as documented."""
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def _spatial_dims(obj: xr.DataArray) -> tuple[Hashable, Hashable]:
    y = next((d for d in obj.dims if str(d).lower() in _Y_NAMES), None)
    x = next((d for d in obj.dims if str(d).lower() in _X_NAMES), None)
    if y is None or x is None:
        if obj.ndim < 2:
            raise ValueError(f"expected a DataArray with spatial dims (y, x), got dims {obj.dims}")
        y, x = obj.dims[-2], obj.dims[-1]
    return y, x


def _band_dim(obj: xr.DataArray) -> Hashable | None:
    return next((d for d in obj.dims if str(d).lower() in _BAND_NAMES), None)


def _float_dtype(dtype: np.dtype) -> np.dtype:
    return np.dtype(np.float64) if np.dtype(dtype) == np.float64 else np.dtype(np.float32)


def _float_array(obj: ArrayLike) -> np.ndarray:
    arr = np.asarray(getattr(obj, "values", obj))
    return arr.astype(_float_dtype(arr.dtype), copy=False)


def _positive_factor(factor: int) -> int:
    if int(factor) != factor or factor < 1:
        raise ValueError(f"factor must be a positive integer, got {factor!r}")
    return int(factor)


def _check_divisible(h: int, w: int, factor: int) -> None:
    if h % factor or w % factor:
        raise ValueError(f"image of {h} x {w} pixels is not a multiple of factor {factor}; crop it first "
                         f"(e.g. img[..., :{h - h % factor}, :{w - w % factor}])")


def _gauss1d(sigma: float, truncate: float) -> np.ndarray:
    radius = int(truncate * sigma + 0.5)
    xs = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (xs / sigma) ** 2)
    return k / k.sum()


def _separable(arr: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Correlate the last two axes with ``kernel`` (odd length), mirrored edges ('dcba|abcd')."""
    r = kernel.size // 2
    kernel = kernel.astype(arr.dtype)
    out = arr
    for axis in (-2, -1):
        pad = [(0, 0)] * out.ndim
        pad[axis] = (r, r)
        padded = np.pad(out, pad, mode="symmetric")
        n = out.shape[axis]
        index = [slice(None)] * out.ndim
        acc = np.zeros_like(out)
        for i, w in enumerate(kernel):
            index[axis] = slice(i, i + n)
            acc += w * padded[tuple(index)]
        out = acc
    return out


def _cubic_weights(t: np.ndarray, a: float) -> np.ndarray:
    """Keys' cubic convolution weights of the 4 taps at offsets -1, 0, 1, 2 for fractions t."""
    d = np.stack([1 + t, t, 1 - t, 2 - t])

    def near(x):
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return np.where(d <= 1, near(d), far(d))


def _cubic_axis(arr: np.ndarray, factor: int, a: float, axis: int) -> np.ndarray:
    n = arr.shape[axis]
    src = (np.arange(n * factor) + 0.5) / factor - 0.5
    base = np.floor(src).astype(int)
    weights = _cubic_weights(src - base, a).astype(arr.dtype)
    out = None
    for tap in range(4):
        idx = np.clip(base + tap - 1, 0, n - 1)
        shape = [1] * arr.ndim
        shape[axis] = -1
        term = np.take(arr, idx, axis=axis) * weights[tap].reshape(shape)
        out = term if out is None else out + term
    return out


def _fill_nan(arr: np.ndarray) -> np.ndarray:
    """Fill NaN pixels (last two axes) with the mean of their valid 4-neighbours, ring by ring."""
    out = arr.copy()
    nan = np.isnan(out)
    while nan.any():
        vals = np.where(nan, 0.0, out)
        ok = (~nan).astype(out.dtype)
        total = np.zeros_like(out)
        count = np.zeros_like(out)
        for axis, shift in ((-2, 1), (-2, -1), (-1, 1), (-1, -1)):
            sl_to = [slice(None)] * out.ndim
            sl_from = [slice(None)] * out.ndim
            sl_to[axis] = slice(shift, None) if shift > 0 else slice(None, shift)
            sl_from[axis] = slice(None, -shift) if shift > 0 else slice(-shift, None)
            total[tuple(sl_to)] += vals[tuple(sl_from)]
            count[tuple(sl_to)] += ok[tuple(sl_from)]
        fill = nan & (count > 0)
        if not fill.any():
            break  # only all-NaN images are left
        out[fill] = total[fill] / count[fill]
        nan &= ~fill
    return out


def _finer_axis(obj: xr.DataArray, dim: Hashable, factor: int) -> np.ndarray:
    values = np.asarray(obj[dim].values, dtype=np.float64) if dim in obj.coords else None
    if values is None:
        return np.arange(obj.sizes[dim] * factor)
    if values.size >= 2:
        step = (values[-1] - values[0]) / (values.size - 1)
    else:
        res = obj.rio.resolution() if obj.rio.crs is not None else (1.0, -1.0)
        step = res[1] if dim == _spatial_dims(obj)[0] else res[0]
    edge = values[0] - step / 2
    return edge + (np.arange(values.size * factor) + 0.5) * step / factor


def _rewrite_transform(out: xr.DataArray, source: xr.DataArray) -> xr.DataArray:
    """Give ``out`` the CRS of ``source`` and a transform derived from its own coordinates."""
    try:
        crs = source.rio.crs
    except Exception:  # rioxarray missing, or coords it cannot read
        crs = None
    if crs is None:
        return out
    from affine import Affine

    y, x = _spatial_dims(out)
    if "spatial_ref" in out.coords:
        out = out.drop_vars("spatial_ref")
    out = out.rio.set_spatial_dims(x_dim=x, y_dim=y, inplace=False).rio.write_crs(crs)
    xs, ys = out[x].values, out[y].values
    if xs.size < 2 or ys.size < 2:
        return out
    dx, dy = (xs[-1] - xs[0]) / (xs.size - 1), (ys[-1] - ys[0]) / (ys.size - 1)
    return out.rio.write_transform(Affine(dx, 0.0, xs[0] - dx / 2, 0.0, dy, ys[0] - dy / 2))
