"""The sensor model and resampling between the 10 m grid and the 2.5 m SR grid.

:func:`degrade` is the one sensor model of the package (Gaussian PSF, then the area mean): the
training pairs (``training.degradation``), the consistency step (``models.consistency``) and the
synthetic cubes (``testing``) use it. :func:`area_downsample`, :func:`bicubic_upsample` and
:func:`gaussian_filter` are its parts and the resamplings of the metrics. :func:`back_project` is the one
back-projection (``hr <- hr + bicubic(lr - degrade(hr))``: the consistency steps of every model).
:func:`degrade_matrix` and :func:`bicubic_matrix` are the same linear maps of finite images as one matrix
per axis; :func:`degrade_torch`, :func:`bicubic_upsample_torch` and :func:`back_project_torch` apply them
to torch tensors (differentiable, for training; fast for images of one size).

Numpy arrays ``(..., y, x)`` or DataArrays with spatial dims (coordinates and a rioxarray transform
follow the new grid). NaN marks nodata and neither spreads nor shrinks. The torch functions take finite
tensors and import torch when called.
"""

from __future__ import annotations

import functools
from collections.abc import Hashable
from typing import TYPE_CHECKING

import numpy as np
import xarray as xr
from numpy.lib.stride_tricks import sliding_window_view

from ._layout import ArrayLike, _float_array, _spatial_dims

if TYPE_CHECKING:
    import torch

__all__ = ["PSF_SIGMA_HR", "area_downsample", "back_project", "back_project_torch", "bicubic_matrix",
           "bicubic_upsample", "bicubic_upsample_torch", "degrade", "degrade_matrix", "degrade_torch",
           "gaussian_filter", "mtf_at_nyquist", "sensor_sigma"]

#: Standard deviation (HR pixels, 2.5 m) of the Gaussian PSF of the 10 m bands: 1.7 px = 4.25 m. With
#: the 4 x 4 area mean, the MTF at the 10 m Nyquist frequency is ~0.27 (:func:`mtf_at_nyquist`), inside
#: the 0.2-0.3 measured for the Sentinel-2 MSI 10 m bands (ESA S2 MPC data quality reports).
PSF_SIGMA_HR = 1.7


def sensor_sigma(factor: int) -> float:
    """PSF sigma (fine pixels) of the sensor model at ``factor``: the 10 m bands' PSF
    (:data:`PSF_SIGMA_HR` at factor 4) scaled to the pixel size, the same PSF width in coarse pixels
    (0.425) at every resolution (MTF at Nyquist 0.27 at factor 4, 0.29 at 2)."""
    return PSF_SIGMA_HR * factor / 4.0


def degrade(hr: ArrayLike, factor: int = 4, *, psf_sigma: float = PSF_SIGMA_HR, truncate: float = 4.0) -> np.ndarray:
    """The sensor model: Gaussian PSF of ``psf_sigma`` HR pixels (0: none), then the area mean.

    Parameters
    ----------
    hr : array (..., factor * h, factor * w) reflectance (any float or integer dtype).
    factor : HR pixels per LR pixel (4: 2.5 m -> 10 m).
    psf_sigma, truncate : the PSF (:func:`gaussian_filter`); ``psf_sigma=0`` gives the area mean alone.

    Returns
    -------
    numpy.ndarray (..., h, w) float32 reflectance (float64 input stays float64). An LR pixel is NaN
    iff any HR pixel it covers is NaN; the PSF of valid pixels next to nodata is renormalised over
    the valid pixels.
    """
    arr = _float_array(hr)
    blurred = gaussian_filter(arr, psf_sigma, truncate=truncate) if psf_sigma > 0 else arr
    return area_downsample(blurred, factor)


def degrade_matrix(n: int, factor: int = 4, *, psf_sigma: float = PSF_SIGMA_HR, truncate: float = 4.0) -> np.ndarray:
    """:func:`degrade` along one axis of ``n`` pixels as a matrix: for a finite image ``x`` (h, w),
    ``degrade(x) == degrade_matrix(h) @ x @ degrade_matrix(w).T`` up to rounding.

    Returns
    -------
    (n / factor, n) float64, made by :func:`degrade` itself (in float64) from the unit vectors.
    """
    factor = _positive_factor(factor)
    _check_divisible(n, n, factor)
    units = np.repeat(np.eye(n)[:, None, :], factor, axis=1)  # (n, factor, n): constant along the 2nd axis
    return degrade(units, factor, psf_sigma=psf_sigma, truncate=truncate)[:, 0, :].T


def bicubic_matrix(n: int, factor: int = 4, *, a: float = -0.5) -> np.ndarray:
    """:func:`bicubic_upsample` along one axis of ``n`` pixels as a matrix: for a finite image ``x``
    (h, w), ``bicubic_upsample(x) == bicubic_matrix(h) @ x @ bicubic_matrix(w).T`` up to rounding.

    Returns
    -------
    (factor * n, n) float64, made by :func:`bicubic_upsample` itself (in float64) from the unit vectors.
    """
    factor = _positive_factor(factor)
    return bicubic_upsample(np.eye(n)[:, None, :], factor, a=a)[:, 0, :].T


def mtf_at_nyquist(factor: int = 4, psf_sigma: float = PSF_SIGMA_HR, truncate: float = 4.0) -> float:
    """MTF of :func:`degrade` (PSF x area mean) at the LR Nyquist frequency, 1 / (2 factor) cycles per HR pixel."""
    f = 1.0 / (2.0 * factor)
    box = abs(np.sin(np.pi * f * factor) / (factor * np.sin(np.pi * f)))
    if psf_sigma == 0:
        return float(box)
    kernel = _gauss1d(psf_sigma, truncate)
    taps = np.arange(kernel.size) - kernel.size // 2
    return float(box * abs(np.sum(kernel * np.cos(2 * np.pi * f * taps))))


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

    Notes
    -----
    Each axis is one small matrix product per pixel, ``(5 LR pixels around it) @ (5, factor)``
    weights (the 4 Keys taps of each output phase, a zero for the fifth pixel), run by numpy's own
    matmul loop (no BLAS thread pool inside dask tasks): within a few float32 ulps (< 1e-6 on
    reflectance) of a tap-by-tap sum, and for an image the same bits whatever the other images in
    the stack. A non-finite pixel makes its 5 x 5 LR neighbourhood non-finite at most.
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
    has_nan = bool(nan.any())
    filled = _fill_nan(arr) if has_nan else arr
    out = _cubic_axis(_cubic_axis(filled, factor, a, axis=-2), factor, a, axis=-1)
    if has_nan:
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


def back_project(fine: ArrayLike, coarse: ArrayLike, factor: int = 4, iterations: int = 1, *,
                 psf_sigma: float = PSF_SIGMA_HR) -> np.ndarray:
    """Back-projection of a measured ``coarse`` image into ``fine``: ``iterations`` steps of
    ``fine <- fine + bicubic_upsample(coarse - degrade(fine))`` with the sensor model of ``psf_sigma``
    (0: the area mean alone), NaN-aware as :func:`degrade` and :func:`bicubic_upsample`.

    Parameters
    ----------
    fine : array (..., factor * h, factor * w) reflectance.
    coarse : array (..., h, w) reflectance, broadcastable against ``fine`` after the grid (e.g.
        (B, 1, C, h, w) for samples (B, S, C, H, W)).

    Returns
    -------
    numpy.ndarray float32 shaped like ``fine`` (a copy for ``iterations=0``).
    """
    out, coarse = np.asarray(fine, dtype=np.float32), np.asarray(coarse, dtype=np.float32)
    if iterations == 0:
        return out.copy()
    for _ in range(iterations):
        out = out + bicubic_upsample(coarse - degrade(out, factor, psf_sigma=psf_sigma), factor)
    return out


def degrade_torch(hr: torch.Tensor, factor: int = 4, *, psf_sigma: float = PSF_SIGMA_HR) -> torch.Tensor:
    """:func:`degrade` of a finite tensor (..., factor * h, factor * w) as ``D_h @ hr @ D_w.T``
    (:func:`degrade_matrix`, float32, in ``hr``'s dtype and device): differentiable, within float32
    rounding of :func:`degrade`; an image's result does not depend on its batch mates."""
    return _product(hr, "degrade", factor, psf_sigma)


def bicubic_upsample_torch(lr: torch.Tensor, factor: int = 4) -> torch.Tensor:
    """:func:`bicubic_upsample` of a finite tensor (..., h, w) as matrix products (:func:`bicubic_matrix`),
    as :func:`degrade_torch`."""
    return _product(lr, "bicubic", factor, 0.0)


def back_project_torch(fine: torch.Tensor, coarse: torch.Tensor, factor: int = 4, iterations: int = 1, *,
                       psf_sigma: float = PSF_SIGMA_HR) -> torch.Tensor:
    """:func:`back_project` of finite tensors, differentiable, within float32 rounding of the steps.

    The same linear map runs on the coarse grid: with ``r_0 = coarse - degrade(fine)`` and
    ``r_{k+1} = r_k - degrade(bicubic(r_k))``, the result is ``fine + bicubic(r_0 + ... +
    r_{iterations-1})``: one :func:`degrade_torch` and one :func:`bicubic_upsample_torch` on the fine
    grid whatever ``iterations``.
    """
    if iterations == 0:
        return fine.clone()
    step_h, step_w = (_matrix("step", n, factor, psf_sigma).to(coarse) for n in coarse.shape[-2:])
    residual = coarse - _product(fine, "degrade", factor, psf_sigma)
    total = residual
    for _ in range(iterations - 1):
        residual = residual - step_h @ residual @ step_w.T
        total = total + residual
    return fine + _product(total, "bicubic", factor, 0.0)


def _product(x: torch.Tensor, kind: str, factor: int, psf_sigma: float) -> torch.Tensor:
    """``M_h @ x @ M_w.T`` over the last two axes, ``M`` the ``kind`` matrix (:func:`_matrix`)."""
    rows, cols = (_matrix(kind, n, factor, psf_sigma).to(x) for n in x.shape[-2:])
    return rows @ x @ cols.T


@functools.lru_cache(maxsize=64)
def _matrix(kind: str, n: int, factor: int, psf_sigma: float) -> torch.Tensor:
    """float32 CPU matrix along an axis of ``n`` pixels: ``"degrade"`` (n / factor, n)
    (:func:`degrade_matrix`), ``"bicubic"`` (factor n, n) (:func:`bicubic_matrix`), ``"step"`` (n, n)
    their product ``degrade @ bicubic`` on a coarse axis (a back-projection step is ``r - S_h @ r @ S_w.T``)."""
    import torch

    if kind == "degrade":
        m = degrade_matrix(n, factor, psf_sigma=psf_sigma)
    elif kind == "bicubic":
        m = bicubic_matrix(n, factor)
    else:
        m = degrade_matrix(factor * n, factor, psf_sigma=psf_sigma) @ bicubic_matrix(n, factor)
    return torch.from_numpy(m.astype(np.float32))


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
    """Upsample one axis. Output pixel ``k = i*factor + p`` (phase p) is the Keys sum over LR pixels
    ``i + b_p - 1 .. i + b_p + 2`` (edges replicated), ``b_p`` = -1 or 0: a window of the 5 pixels
    ``i - 2 .. i + 2`` times column p of a (5, factor) weight matrix."""
    moved = np.moveaxis(arr, axis, -1)
    n = moved.shape[-1]
    src = (np.arange(factor) + 0.5) / factor - 0.5  # phase p's position relative to LR pixel i
    base = np.floor(src).astype(int)  # -1 or 0
    taps = _cubic_weights(src - base, a)  # (4, factor)
    weights = np.zeros((5, factor), dtype=arr.dtype)
    for p in range(factor):
        weights[base[p] + 1 : base[p] + 5, p] = taps[:, p]
    padded = np.pad(moved, [(0, 0)] * (arr.ndim - 1) + [(2, 2)], mode="edge")  # pixel j at j + 2
    windows = sliding_window_view(padded, 5, axis=-1)[..., :n, :]  # (..., n, 5): pixels i-2 .. i+2
    out = np.matmul(windows, weights).reshape(*moved.shape[:-1], n * factor)
    return np.moveaxis(out, -1, axis)


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
