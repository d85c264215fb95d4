"""A 10 m model then the 20 m model, behind the one model protocol: the kernel calls ``run`` once.

:class:`Chain` takes patches of the base model's bands (the native 10 m bands) followed by native
20 m bands on the 10 m grid (each 20 m pixel a 2 x 2 block of equal 10 m pixels, as odc-stac's
nearest-neighbour resampling delivers them). Its :meth:`~Chain.run` runs the base model on the first
channels, then the 20 m path (:func:`guided_path`): each block's mean is the native 20 m value, and
the 20 m model (:class:`~xr_opensr.models.guided.GuidedSR`) super-resolves it with the native 10 m
bands and their super-resolution as the guide; its uncertainty is the 20 m model's standard deviation.

Nodata is per band (:meth:`Chain.valid`): a 10 m pixel that is nodata in any base band is NaN in
every band (the base bands are the 20 m bands' guide); a 20 m band's nodata is NaN in that band only.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import InputError, ModelError
from ..sentinel2 import BANDS
from .base import ModelInfo, SampleOptions

__all__ = ["Chain", "guided_path", "check_native_blocks", "BLOCK_TOLERANCE"]


class Chain:
    """A base model (the 10 m bands) then the 20 m model (:class:`~xr_opensr.models.guided.GuidedSR`).

    Parameters
    ----------
    base : any model of the protocol (:class:`~xr_opensr.models.base.Model`) whose bands are the
        20 m model's guide bands, in that order.
    guided : the 20 m model.
    bands20 : the native 20 m bands in the patches after the base bands, in the 20 m model's order
        (a non-empty subset of ``guided.bands``; the others are stood in for, see :func:`guided_path`).
    phase20 : (row, column) of the patches' first pixel within the 20 m grid, 0 or 1 each (10 m
        pixels): where the 2 x 2 blocks of 10 m pixels holding one 20 m pixel begin.

    The chain holds references only (construction is cheap); :meth:`place` moves both models.
    """

    def __init__(self, base: Any, guided: Any, bands20: Sequence[str], phase20: Sequence[int] = (0, 0)) -> None:
        bands20, phase20 = tuple(bands20), tuple(int(p) for p in phase20)
        order = tuple(guided.bands)
        if not bands20 or len(set(bands20)) != len(bands20) or any(b not in order for b in bands20) or \
                sorted(bands20, key=order.index) != list(bands20):
            raise InputError(f"bands20={list(bands20)}: give one or more of the 20 m model's bands {list(order)}, "
                             "each once, in that order")
        if len(phase20) != 2 or any(p not in (0, 1) for p in phase20):
            raise InputError(f"phase20={phase20}: give (row, column) within the 20 m grid, each 0 or 1")
        info = base.info
        if tuple(info.bands) != tuple(guided.guide_bands) or info.whole_dims:
            raise ModelError(f"model {info.name!r} (bands {list(info.bands)}, core dims {info.core_dims}) cannot be "
                             f"chained with the 20 m model {guided.info.name!r}: it needs a single-date model of the "
                             f"bands {list(guided.guide_bands)} in that order")
        self.base, self.guided, self.bands20, self.phase20 = base, guided, bands20, phase20
        self._n10 = len(info.bands)

    def __repr__(self) -> str:
        return f"Chain({self.base!r}, {self.guided!r}, bands20={self.bands20}, phase20={self.phase20})"

    @property
    def info(self) -> ModelInfo:
        """The base model's description with the 20 m bands after its bands: mean and std only (the
        20 m model gives no samples), patch sides a multiple of 2 (20 m pixels), not local (the 20 m
        model fits per patch), the 20 m model's name and version in ``attrs``."""
        b, g = self.base.info, self.guided.info
        return ModelInfo(
            name=b.name, version=b.version, bands=(*b.bands, *self.bands20),
            bands_out=(*b.bands_out, *self.bands20), scale=b.scale, patch=b.patch, overlap=b.overlap,
            patch_multiple=math.lcm(b.patch_multiple, 2), halo=None, core_dims=b.core_dims,
            outputs=tuple(o for o in b.outputs if o != "samples"), sampling=b.sampling,
            mean_without_samples=b.mean_without_samples, std_scale=b.std_scale, consistency=b.consistency,
            trained=b.trained, attrs=(*b.attrs, ("model20", g.name), ("model20_version", g.version)),
        )

    @property
    def device(self) -> Any:
        """The base model's device (the 20 m model runs there too)."""
        return self.base.device

    def place(self, device: Any = "auto", dtype: Any = None) -> Chain:
        """The base model to ``device`` in ``dtype``, the 20 m model to the same device (float32)."""
        self.base = self.base.place(device, dtype)
        self.guided = self.guided.place(self.base.device)
        return self

    def prepare_inference(self) -> Chain:
        """The base model's ``prepare_inference`` where it has one."""
        if hasattr(self.base, "prepare_inference"):
            self.base.prepare_inference()
        return self

    def compile_denoiser(self) -> Chain:
        """The base model's ``compile_denoiser`` where it has one."""
        if hasattr(self.base, "compile_denoiser"):
            self.base.compile_denoiser()
        return self

    def run(self, patches: Any, seeds: Any, options: SampleOptions) -> np.ndarray:
        """Super-resolve the base bands, then the 20 m bands.

        Parameters
        ----------
        patches : (N, C, P, P) float32 reflectance: the base bands, then :attr:`bands20` on the 10 m
            grid; NaN = nodata; P even.
        seeds : (N,) uint64, the base model's noise seed of each patch (the 20 m path is deterministic).
        options : how to run the base model; ``return_samples`` is refused (no 20 m samples).

        Returns
        -------
        (N, 2, C, s*P, s*P) float32: plane 0 the mean, plane 1 the standard deviation (the 20 m
        bands' NaN with ``samples=0``: no 10 m uncertainty to propagate); NaN where :meth:`valid` is
        False.
        """
        if options.return_samples:
            raise InputError(
                f"return_samples=True with the 20 m bands {list(self.bands20)}: the 20 m model gives a mean and "
                "a standard deviation, not samples; use return_samples=False, or ask for 10 m bands only"
            )
        patches = np.asarray(patches, dtype=np.float32)
        out = self.base.run(patches[:, :self._n10], seeds, options)
        if not len(patches):
            size = out.shape[-1]
            return np.empty((0, 2, patches.shape[1], size, size), dtype=np.float32)
        out20 = guided_path(self.guided, patches, out[:, 0], out[:, 1] if options.samples else None,
                            bands20=self.bands20, phase20=self.phase20)
        return np.concatenate([out[:, :2], out20], axis=2)

    def valid(self, patches: np.ndarray) -> np.ndarray:
        """(N, C, P, P) bool: where each output channel is defined: the base bands all valid, and, for
        a 20 m channel, that channel valid too."""
        n10 = self._n10
        guide = np.isfinite(patches[:, :n10]).all(axis=1, keepdims=True)
        return guide & (np.isfinite(patches) | (np.arange(patches.shape[1]) < n10)[None, :, None, None])


def guided_path(guided: Any, patches: np.ndarray, mean10: np.ndarray, std10: np.ndarray | None, *,
                bands20: tuple[str, ...], phase20: tuple[int, int]) -> np.ndarray:
    """The 20 m bands of the patches super-resolved by the 20 m model.

    Parameters
    ----------
    guided : the 20 m model (:class:`~xr_opensr.models.guided.GuidedSR`).
    patches : (N, C, P, P) float32 reflectance: the guide bands, then ``bands20`` on the 10 m grid.
    mean10, std10 : (N, c10, sP, sP) the 10 m path's mean and standard deviation; ``std10`` None:
        none (``samples=0``), the 20 m standard deviation is not computed (NaN).
    bands20 : the channels after the guide bands, in the 20 m model's order.
    phase20 : (row, column) within the 20 m grid of the patches' first pixel.

    Returns
    -------
    (N, 2, len(bands20), sP, sP) float32: mean (clipped at 0, as the 10 m path) and standard deviation.

    A 20 m pixel cut by the patch edge (phase 1) is completed by one row/column of edge padding of
    every input (its value is known from its half inside), and the output cropped back. A 20 m pixel
    cut by the image edge keeps the half inside (the graph pads 20 m channels with NaN). Nodata is per
    band: a 20 m band missing at a pixel (or lacking from the input) is stood in for, as the model's
    input only, by the 20 m band nearest in wavelength that is present there; the band's output is
    NaN where its own input is nodata. The 2 x 2 blocks of a 20 m band must be constant (nearest
    resampling on the 20 m grid): :func:`check_native_blocks`.
    """
    n10 = mean10.shape[1]
    size = patches.shape[-1]
    s = mean10.shape[-1] // size
    py, px = phase20
    pad = ((0, 0), (0, 0), (py, (size + py) % 2), (px, (size + px) % 2))
    lr10, fine20 = patches[:, :n10], patches[:, n10:]
    check_native_blocks(fine20, bands20, phase20)
    if any(p for axis in pad for p in axis):
        lr10, fine20 = np.pad(lr10, pad, mode="edge"), np.pad(fine20, pad, mode="edge")
        hr_pad = tuple((s * a, s * b) for a, b in pad)
        mean10 = np.pad(mean10, hr_pad, mode="edge")
        std10 = None if std10 is None else np.pad(std10, hr_pad, mode="edge")
    n, k, h, w = fine20.shape
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN blocks stay NaN
        native = np.nanmean(fine20.reshape(n, k, h // 2, 2, w // 2, 2), axis=(3, 5)).astype(np.float32)
    target = _stand_in_values(native, bands20, tuple(guided.bands))
    mean, std = guided.superresolve(lr10, target, mean10, std10)
    index = [guided.bands.index(b) for b in bands20]
    crop = (slice(None), index, slice(s * py, s * (py + size)), slice(s * px, s * (px + size)))
    mean = np.maximum(mean[crop], np.float32(0.0))  # reflectance is not negative (as the 10 m path; NaN stays)
    out = np.stack([mean, std[crop]], axis=1).astype(np.float32)
    own = np.isnan(patches[:, n10:]).repeat(s, axis=-2).repeat(s, axis=-1)  # (N, k, sP, sP): the band's nodata
    np.copyto(out, np.float32(np.nan), where=own[:, None])
    return out


#: largest spread of a 2 x 2 block of a 20 m band on the 10 m grid (reflectance) still taken as
#: one native 20 m pixel: float rounding of DN scaling, far below one DN (1e-4)
BLOCK_TOLERANCE = 2e-5


def check_native_blocks(fine20: np.ndarray, bands20: tuple[str, ...], phase20: tuple[int, int]) -> None:
    """The 20 m channels (N, k, P, P) must hold each native 20 m pixel as a constant 2 x 2 block on
    the Sentinel-2 20 m grid (phase ``phase20``); NaN is ignored (nodata, or past the image edge).
    Blocks that are not constant mean the bands were shifted, resampled across the grid (another
    UTM zone, bilinear or cubic resampling) or are not Sentinel-2 20 m data: their native values
    cannot be read, so InputError instead of a silently wrong result."""
    py, px = phase20
    n, k, h, w = fine20.shape
    core = fine20[:, :, py: py + (h - py) // 2 * 2, px: px + (w - px) // 2 * 2]
    blocks = core.reshape(n, k, core.shape[-2] // 2, 2, core.shape[-1] // 2, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN blocks
        spread = np.nanmax(blocks, axis=(3, 5)) - np.nanmin(blocks, axis=(3, 5))  # (n, k, h/2, w/2)
    bad = spread > BLOCK_TOLERANCE
    if not bad.any():
        return
    per_band = bad.sum(axis=(0, 2, 3))
    worst = ", ".join(f"{b}: {int(c)} of {bad[:, i].size} blocks, up to {np.nanmax(spread[:, i]):.3g}"
                      for i, (b, c) in enumerate(zip(bands20, per_band)) if c)
    raise InputError(
        "the 20 m bands are not on the Sentinel-2 20 m grid: their 2 x 2 blocks of 10 m pixels (edges at "
        f"multiples of 20 m of the CRS) are not constant ({worst}), so the native 20 m values cannot be read "
        "(shifted by 10 m, resampled from another grid or UTM zone, or with bilinear/cubic resampling). Load "
        "them on the 20 m grid with nearest resampling, e.g. xr_opensr.stac.load_s2(..., bands='all') or "
        "odc.stac.load(..., resolution=10, resampling='nearest'), or ask for the 10 m bands only"
    )


def _stand_in_values(native: np.ndarray, present: tuple[str, ...], order: tuple[str, ...]) -> np.ndarray:
    """(N, len(order), h, w): each band of ``order`` from ``native`` (N, len(present), h, w); where a
    band is absent or nodata, the value of the present band nearest in central wavelength that is
    valid at that pixel (NaN where no 20 m band is)."""
    out = np.empty((native.shape[0], len(order), *native.shape[2:]), dtype=np.float32)
    for c, band in enumerate(order):
        ranked = sorted(range(len(present)), key=lambda i: (present[i] != band,
                                                             abs(BANDS[present[i]].wavelength_nm
                                                                 - BANDS[band].wavelength_nm)))
        value = native[:, ranked[0]].copy()
        for i in ranked[1:]:
            hole = np.isnan(value)
            if not hole.any():
                break
            value[hole] = native[:, i][hole]
        out[:, c] = value
    return out
