"""The dask layer: a fixed patch grid, explicit halos, one kernel pass per patch, seamless blend or crop.

Everything here works on ``dask.array`` and numpy; the model is reached only through the
``kernel`` callable (``_kernel.run_patches`` bound to a ModelSpec, or a numpy stand-in in tests).

Patch grid
    Along an axis of n LR pixels, patch ``i`` covers ``[i*S, i*S + P)`` with stride
    ``S = P - O`` (P = patch, O = overlap <= P/2), anchored at the array's first pixel. There are
    ``1`` patch if ``n <= P`` else ``ceil((n - O) / S)``; the last one may reach past the array and is
    padded (reflect, then edge) to exactly P x P, its output cropped.

Blocks
    The grid is cut into *tiles* ``[t*S, (t+1)*S)`` (``ceil(n/S)`` of them, the last cropped); an
    output block is ``g`` whole tiles per axis (chunks ``g*S`` LR / ``4*g*S`` HR pixels, the last
    smaller, so Zarr accepts them). A block *owns* the patches that start in it.

Two stages, each patch computed once
    1. ``opensr-spill``: a block's last patch row and column reach O pixels into the next blocks.
       They are computed from the block's input chunk plus a halo of the first O rows/columns of
       the next blocks (explicit small ``opensr-halo-*`` copies) -> (..., ni, nj, K, C, sP, sP).
       ``opensr-edge-*`` tasks copy out the parts the next blocks need (HR rows/columns from s*S).
    2. ``opensr-blend``: per block, its remaining (interior) patches through the kernel, then
       the weighted blend (or crop) of interior + spill + the previous blocks' edges, cut to the block
       -> (..., K, C, sh, sw). Interior results never leave the task, so whatever order the
       scheduler picks, what waits for a later block is thin: spills and edges (a patch row per
       row of blocks), not whole blocks. All-nodata patches skip the kernel.

Blend
    Separable weights: 1 inside a patch, a raised-cosine ramp ``sin^2`` up over its first ``s*O``
    HR pixels (unless first patch) and down over its last ``s*O`` (unless last patch); the ramps
    of neighbours sum to 1. Every output pixel is ``sum_p w_p v_p / sum_p w_p`` accumulated over
    its covering patches in global row-major patch order, so it is bit-identical whatever the
    chunking. NaN (nodata) in a patch stays NaN where it is; it never spreads (to other
    pixels, nor from a per-band channel to other channels: see ``guide_channels``).

Crop (``crop=True``, for a fully convolutional model with a receptive-field halo of ``h`` LR pixels)
    The same grid, the same two stages, with ``O = 2h``, but no blend: each HR pixel takes, bit for
    bit, the value of the one patch whose *centre* covers it, ``[s*O//2, s*P - s*O + s*O//2)`` HR
    pixels of the patch (from its start for the first patch along an axis, to its end for the
    last). The centres tile the image exactly, so each output pixel is computed once, plus the
    halo's share ``(P / S)^2`` per pixel; patch borders are discarded without being read (NaN
    there never reaches the output), and the edges passed to the next blocks are only the centre
    rows/columns they take. A centre pixel sees only its patch's data within ``h`` of it, the same
    as in the whole image, so the result is the model run on the whole image: bit for bit with a
    model whose arithmetic per pixel does not depend on the input size (up to float rounding
    otherwise, e.g. a convolution algorithm chosen per size), and with one exception: where the
    image ends less than ``h`` pixels before the end of its (padded) last patch, the pixels within
    ``h`` of that edge see the model's own padding at the patch end. No seams, by construction
    (tests: ``test_graph.py``, "crop"); ``models.halo.receptive_halo`` measures ``h``.

Seeds
    Patch (i, j) of the leading-dims element with key ``k`` draws its noise from
    ``patch_seed(seed, k, i, j)`` (numpy SeedSequence): never from a block id or task order.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph, MaterializedLayer

__all__ = [
    "PatchGrid",
    "Kernel",
    "patch_seed",
    "superresolve_array",
    "TARGET_BLOCK_LR",
]

#: ``kernel(patches (N, C, P, P) float32, seeds (N,) uint64[, context (N, ...)]) -> (N, K, C, sP, sP) float32``
Kernel = Callable[..., np.ndarray]

#: largest output block side in LR pixels chosen when the input chunks are larger (or numpy)
TARGET_BLOCK_LR = 128


@dataclass(frozen=True)
class PatchGrid:
    """The fixed patch grid of one image plane (LR pixels unless said otherwise)."""

    height: int
    width: int
    patch: int
    overlap: int
    scale: int = 4
    #: crop instead of blend: every HR pixel takes the value of the one patch whose centre covers it
    crop: bool = False

    def __post_init__(self) -> None:
        if not (self.height >= 1 and self.width >= 1):
            raise ValueError(f"empty image {self.height} x {self.width}")
        if not 0 <= self.overlap <= self.patch // 2:
            raise ValueError(f"overlap must be in [0, patch/2], got {self.overlap} for patch {self.patch}")

    @property
    def stride(self) -> int:
        return self.patch - self.overlap

    def count(self, n: int) -> int:
        """Patches along an axis of ``n`` LR pixels."""
        return 1 if n <= self.patch else math.ceil((n - self.overlap) / self.stride)

    @property
    def rows(self) -> int:
        return self.count(self.height)

    @property
    def cols(self) -> int:
        return self.count(self.width)

    @property
    def n_patches(self) -> int:
        return self.rows * self.cols

    def ramp(self) -> np.ndarray:
        """Rising raised-cosine weights over the ``s*O`` HR pixels of an overlap, (s*O,) float32."""
        m = self.scale * self.overlap
        t = (np.arange(m, dtype=np.float64) + 0.5) / m
        return (np.sin(0.5 * np.pi * t) ** 2).astype(np.float32)

    @property
    def cut(self) -> int:
        """Crop mode: the HR pixels at the start of an overlap that still belong to the earlier patch
        (``s*O // 2``: half the overlap, the model's halo when ``O = 2 * halo``)."""
        return self.scale * self.overlap // 2

    def support(self, index: int, count: int) -> tuple[int, int]:
        """The HR range ``[lo, hi)`` of patch ``index`` of ``count`` along one axis where its window is
        not zero: the whole patch when blending; its centre when cropping, ``[cut, s*P - s*O + cut)``,
        reaching the patch's start for the first patch and its end for the last."""
        hp = self.scale * self.patch
        if not self.crop:
            return 0, hp
        lo = self.cut if index > 0 else 0
        hi = hp - self.scale * self.overlap + self.cut if index < count - 1 else hp
        return lo, hi

    def window(self, index: int, count: int) -> np.ndarray:
        """HR weights (s*P,) float32 of patch ``index`` of ``count`` along one axis.

        Blend: raised-cosine ramps over the overlaps (> 0 everywhere). Crop: 1 on :meth:`support`,
        0 elsewhere; the supports of neighbouring patches tile the axis exactly.
        """
        w = np.ones(self.scale * self.patch, dtype=np.float32)
        if self.crop:
            lo, hi = self.support(index, count)
            w[:lo] = 0
            w[hi:] = 0
        elif self.overlap:
            r = self.ramp()
            if index > 0:
                w[: r.size] = r
            if index < count - 1:
                w[w.size - r.size :] = r[::-1]
        return w


def patch_seed(seed: int, key: int, row: int, col: int) -> int:
    """Noise seed of patch (row, col) of the leading-dims element ``key``: a stable hash in [0, 2**63)."""
    state = np.random.SeedSequence([int(seed), int(key), int(row), int(col)]).generate_state(2, np.uint32)
    return (int(state[0]) | (int(state[1]) << 32)) & (2**63 - 1)


# --------------------------------------------------------------------------- numpy block functions


def _pad_patch(a: np.ndarray, size: int, guide_channels: int | None = None,
               reference_first: bool = False) -> np.ndarray:
    """Pad (..., C, h, w) at the bottom/right to (..., C, size, size): reflect while possible, then
    edge (the same rule as the model's own padding). Channels from ``guide_channels`` on (per-band
    channels, e.g. native 20 m bands) are padded with NaN instead: a value reflected across the
    image edge is not theirs (a 20 m pixel cut by the edge keeps only its own half). So are, with
    ``reference_first``, the entries after the first of the first whole dim (extra looks: mirrored,
    a shifted look would seem shifted the other way)."""
    h, w = a.shape[-2:]
    a = _pad_reflect(a, size)
    if guide_channels is not None and guide_channels < a.shape[-3] and (h < size or w < size):
        a[..., guide_channels:, h:, :] = np.nan
        a[..., guide_channels:, :, w:] = np.nan
    if reference_first and a.ndim > 3 and (h < size or w < size):
        a[1:, ..., h:, :] = np.nan
        a[1:, ..., :, w:] = np.nan
    return a


def _pad_reflect(a: np.ndarray, size: int) -> np.ndarray:
    lead = ((0, 0),) * (a.ndim - 2)
    while a.shape[-2] < size or a.shape[-1] < size:
        dh, dw = size - a.shape[-2], size - a.shape[-1]
        rh, rw = min(dh, a.shape[-2] - 1), min(dw, a.shape[-1] - 1)
        if rh > 0 or rw > 0:
            a = np.pad(a, (*lead, (0, max(rh, 0)), (0, max(rw, 0))), mode="reflect")
        else:
            a = np.pad(a, (*lead, (0, dh), (0, dw)), mode="edge")
    return a


def _to_reflectance(
    raw: np.ndarray, scale: np.ndarray | None, offset: np.ndarray | None, nodata: np.ndarray | None
) -> np.ndarray:
    """(L, C, h, w) raw values -> float32 reflectance, NaN where nodata or not finite.

    ``scale``/``offset``/``nodata`` are per band (C,), None = identity / no nodata value.
    """
    if scale is None and offset is None:
        out = raw.astype(np.float32, copy=True)
    else:
        out = raw.astype(np.float64)
        if scale is not None:
            out *= scale[:, None, None]
        if offset is not None:
            out += offset[:, None, None]
        out = out.astype(np.float32)
    if nodata is not None:
        for band, value in enumerate(nodata):
            if not np.isnan(value):
                out[:, band][raw[:, band] == value] = np.nan
    out[~np.isfinite(out)] = np.nan
    return out


def _join(main: np.ndarray, bottom: np.ndarray | None, right: np.ndarray | None,
          corner: np.ndarray | None, row_axis: int, col_axis: int) -> np.ndarray:
    """[[main, right], [bottom, corner]] along (row_axis, col_axis); missing pieces are skipped."""
    top = main if right is None else np.concatenate([main, right], axis=col_axis)
    if bottom is None:
        return top
    low = bottom if corner is None else np.concatenate([bottom, corner], axis=col_axis)
    return np.concatenate([top, low], axis=row_axis)


def _patch_block(
    main: np.ndarray,
    bottom: np.ndarray | None,
    right: np.ndarray | None,
    corner: np.ndarray | None,
    context: np.ndarray | None = None,
    *,
    kernel: Kernel,
    grid: PatchGrid,
    origin: tuple[int, int],
    rects: tuple[tuple[int, int, int, int], ...],
    keys: np.ndarray,
    seed: int,
    n_outputs: int,
    conversion: tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None],
    guide_channels: int | None = None,
    whole: int = 0,
    reference_first: bool = False,
) -> tuple[np.ndarray, ...]:
    """Stage 1: super-resolve some of the patches a block owns, in one kernel call.

    ``main`` (*L, *W, C, h, w) is the block's raw input (``W``: the ``whole`` leading dims the model
    consumes, whole in every block; the kernel gets (N, *W, C, P, P) and returns no ``W``), ``bottom``/``right``/``corner`` the halo
    strips of the next blocks (None when not needed); ``origin`` the global LR (row, col) of
    ``main[..., 0, 0]``; ``rects`` global patch index ranges ``(i0, i1, j0, j1)``; ``keys``
    (*L,) the leading elements' seed keys; ``context`` (*L, ...) the block's rows of
    :func:`superresolve_array`'s ``context`` (None: none), passed to the kernel per patch.
    Returns one (*L, i1 - i0, j1 - j0, K, C, s*P, s*P) float32 array per rect; NaN for
    all-nodata patches, which never reach the kernel.
    """
    x = _join(main, bottom, right, corner, -2, -1)
    lead, inner = x.shape[: x.ndim - 3 - whole], x.shape[x.ndim - 3 - whole : -3]
    c = x.shape[-3]
    x = _to_reflectance(x.reshape((-1, *x.shape[-3:])), *conversion)
    x = x.reshape((-1, *inner, *x.shape[-3:]))  # (L, *W, C, h, w)
    flat_keys = np.asarray(keys, dtype=np.uint64).reshape(-1)
    r0, c0 = origin
    P, S, s = grid.patch, grid.stride, grid.scale
    shapes = [(x.shape[0], i1 - i0, j1 - j0, n_outputs, c, s * P, s * P) for i0, i1, j0, j1 in rects]
    # (L, h, w): nodata if any guide channel is (at every entry of the whole dims)
    valid = np.isfinite(x[..., :guide_channels, :, :]).all(axis=-3)
    valid = valid.reshape((valid.shape[0], -1, *valid.shape[-2:])).any(axis=1)
    batch, seeds, where = [], [], []
    ctx = None if context is None else context.reshape((-1, *context.shape[len(lead):]))
    for r, (i0, i1, j0, j1) in enumerate(rects):
        for lead_i, i, j in itertools.product(range(x.shape[0]), range(i0, i1), range(j0, j1)):
            ys = slice(i * S - r0, min(i * S + P, grid.height) - r0)
            xs = slice(j * S - c0, min(j * S + P, grid.width) - c0)
            if not valid[lead_i, ys, xs].any():
                continue  # all nodata: no kernel call, stays NaN
            batch.append(_pad_patch(x[lead_i, ..., ys, xs], P, guide_channels, reference_first))
            seeds.append(patch_seed(seed, int(flat_keys[lead_i]), i, j))
            where.append((r, lead_i, i - i0, j - j0))
    res = None
    if batch:
        args = (np.stack(batch), np.asarray(seeds, dtype=np.uint64))
        if ctx is not None:
            args += (ctx[[lead_i for _, lead_i, _, _ in where]],)
        res = np.asarray(kernel(*args), np.float32)
    counts = [math.prod(shape[:3]) for shape in shapes]
    if batch and len(where) == sum(counts):  # no all-nodata patch: res is the rects in order, no copy
        bounds = np.cumsum([0, *counts])
        outs = [res[a:b].reshape(shape) for a, b, shape in zip(bounds[:-1], bounds[1:], shapes)]
    else:
        outs = [np.full(shape, np.nan, dtype=np.float32) for shape in shapes]
        for (r, lead_i, a, b), value in zip(where, res if batch else ()):
            outs[r][lead_i, a, b] = value
    return tuple(o.reshape((*lead, *o.shape[1:])) for o in outs)


def _edge(spill: tuple[np.ndarray, ...], *, which: str, has_row: bool, crop: int,
          stop: tuple[int | None, int | None] = (None, None)) -> np.ndarray:
    """The part of a block's spill patches that the next block needs, copied.

    ``spill`` = (last patch row,) + (last patch column without the corner,) as made by
    :func:`_patch_block`; ``which`` is "row" (for the block below: the last patch row, HR rows
    from ``crop`` on), "col" (for the block to the right: the last patch column, HR columns from
    ``crop`` on) or "corner". ``stop``: the (row, column) HR index where the copy ends (crop mode:
    the end of the patch's centre, as the next block reads no further; None: the patch's end).
    Copies: a view would keep the whole spill alive.
    """
    row = spill[0] if has_row else None
    ys, xs = slice(crop, stop[0]), slice(crop, stop[1])
    if which == "row":
        return row[..., ys, :].copy()
    if which == "corner":
        return row[..., -1:, :, :, ys, xs].copy()
    col = spill[-1] if len(spill) == 2 or not has_row else None
    parts = [p for p in (col, None if row is None else row[..., -1:, :, :, :, :]) if p is not None]
    return np.concatenate([p[..., xs] for p in parts], axis=-6)


#: a patch in a block task: (piece (L, rows, cols, K, C, y, x), its row, its col, HR row and column of
#: the patch where the piece starts (> 0 for the neighbours' edges, which lack the rows/columns before))
_Cell = tuple[np.ndarray, int, int, int, int]


def _blend_block(
    interior: tuple[np.ndarray] | None,
    spill: tuple[np.ndarray, ...] | None,
    top: np.ndarray | None,
    left: np.ndarray | None,
    corner: np.ndarray | None,
    *,
    grid: PatchGrid,
    patches: tuple[int, int, int, int],
    spills: tuple[bool, bool],
    rows: tuple[int, int],
    cols: tuple[int, int],
) -> np.ndarray:
    """Stage 2: blend (or, with ``grid.crop``, paste) the patches covering a block into its HR pixels.

    ``interior``/``spill`` are the block's own patches (rows ``[p0, p1)`` x cols ``[q0, q1)`` =
    ``patches``; ``spills`` says whether the last row / column is in ``spill``), ``top``/``left``/
    ``corner`` the cropped last patch row / column / corner of the previous blocks (HR rows or
    columns before the crop are never read); ``rows``/``cols`` the block's LR pixel range.
    Returns (*L, K, C, s*h, s*w) float32.
    """
    p0, p1, q0, q1 = patches
    sr, sc = spills
    pieces = [a for a in ((interior or ()) + (spill or ()) + (top, left, corner)) if a is not None]
    lead = pieces[0].shape[:-6]
    k, c, hp = pieces[0].shape[-4], pieces[0].shape[-3], grid.scale * grid.patch
    n_lead = int(np.prod(lead))
    dr, dc = int(top is not None or corner is not None), int(left is not None or corner is not None)
    crop = grid.scale * grid.stride  # where the neighbours' edges start in their patches
    cells: dict[tuple[int, int], _Cell] = {}  # (a, b) -> (piece, its row, its col, dy, dx)

    def put(arr: np.ndarray | None, i: int, j: int, dy: int = 0, dx: int = 0) -> None:
        if arr is not None and arr.size:
            arr = arr.reshape((n_lead, *arr.shape[-6:]))
            for a, b in itertools.product(range(arr.shape[1]), range(arr.shape[2])):
                cells[i + a, j + b] = (arr, a, b, dy, dx)

    if interior is not None:
        put(interior[0], dr, dc)
    if spill is not None:
        if sr:
            put(spill[0], dr + p1 - p0 - 1, dc)
        if sc:
            put(spill[-1], dr, dc + q1 - q0 - 1)
    put(top, 0, dc, dy=crop)
    put(left, dr, 0, dx=crop)
    put(corner, 0, 0, dy=crop, dx=crop)
    i0, j0 = p0 - dr, q0 - dc  # global index of cell (0, 0)
    (y0, y1), (x0, x1) = rows, cols
    s, S = grid.scale, grid.stride
    hy0, hy1, hx0, hx1 = s * y0, s * y1, s * x0, s * x1
    n_rows, n_cols = dr + p1 - p0, dc + q1 - q0
    if grid.crop:
        out = np.full((n_lead, k, c, hy1 - hy0, hx1 - hx0), np.nan, dtype=np.float32)
        for (a, ys, py), (b, xs, px) in itertools.product(
            _spans(grid, i0, n_rows, grid.rows, hy0, hy1), _spans(grid, j0, n_cols, grid.cols, hx0, hx1)
        ):
            out[..., py, px] = _cell(cells.get((a, b)), ys, xs, hp)
        return out.reshape((*lead, *out.shape[1:]))
    acc = np.zeros((n_lead, k, c, hy1 - hy0, hx1 - hx0), dtype=np.float32)
    wsum = np.zeros((hy1 - hy0, hx1 - hx0), dtype=np.float32)
    windows_x = [grid.window(j0 + b, grid.cols) for b in range(n_cols)]
    buf = np.empty((n_lead, k, c, hp, hp), dtype=np.float32)  # one patch's weighted values, reused
    for a in range(n_rows):  # global row-major order: the same summation order in every chunking
        i = i0 + a
        wy = grid.window(i, grid.rows)
        py0, py1 = max(hy0, s * i * S), min(hy1, s * i * S + wy.size)
        if py1 <= py0:
            continue
        for b in range(n_cols):
            j = j0 + b
            wx = windows_x[b]
            px0, px1 = max(hx0, s * j * S), min(hx1, s * j * S + wx.size)
            if px1 <= px0:
                continue
            ys, xs = slice(py0 - s * i * S, py1 - s * i * S), slice(px0 - s * j * S, px1 - s * j * S)
            w = np.multiply.outer(wy[ys], wx[xs])
            term = np.multiply(_cell(cells.get((a, b)), ys, xs, hp), w, out=buf[..., : w.shape[0], : w.shape[1]])
            acc[..., py0 - hy0 : py1 - hy0, px0 - hx0 : px1 - hx0] += term
            wsum[py0 - hy0 : py1 - hy0, px0 - hx0 : px1 - hx0] += w
    acc /= wsum
    return acc.reshape((*lead, *acc.shape[1:]))


def _spans(grid: PatchGrid, first: int, n: int, count: int, h0: int, h1: int) -> list[tuple[int, slice, slice]]:
    """Crop mode, along one axis: for the ``n`` patches from global index ``first`` (of ``count``),
    the HR pixels of ``[h0, h1)`` that each one's :meth:`PatchGrid.support` gives it, as
    (cell index, slice in the patch, slice in the block); patches giving none are left out, so
    their discarded borders are never read."""
    out, step = [], grid.scale * grid.stride
    for a in range(n):
        lo, hi = grid.support(first + a, count)
        origin = step * (first + a)
        p0, p1 = max(h0, origin + lo), min(h1, origin + hi)
        if p1 > p0:
            out.append((a, slice(p0 - origin, p1 - origin), slice(p0 - h0, p1 - h0)))
    return out


def _cell(cell: _Cell | None, ys: slice, xs: slice, hp: int) -> np.ndarray:
    """HR rows ``ys`` and columns ``xs`` of a patch (``(piece, row, col, dy, dx)``, the piece holding
    the patch's HR rows from ``dy`` and columns from ``dx`` of the ``hp`` x ``hp`` patch),
    (L, K, C, y, x); NaN where the patch is missing or cropped away (a view when it is all there)."""
    if cell is None:
        return np.float32(np.nan)
    arr, a, b, dy, dx = cell
    h, w = arr.shape[-2:]
    if dy <= ys.start and ys.stop <= dy + h and dx <= xs.start and xs.stop <= dx + w:
        return arr[:, a, b, :, :, ys.start - dy : ys.stop - dy, xs.start - dx : xs.stop - dx]
    full = np.full((*arr.shape[:1], *arr.shape[3:5], hp, hp), np.nan, dtype=np.float32)
    full[..., dy : dy + h, dx : dx + w] = arr[:, a, b]
    return full[..., ys, xs]


def _finish_block(
    main: np.ndarray,
    spill: tuple[np.ndarray, ...] | None,
    top: np.ndarray | None,
    left: np.ndarray | None,
    corner: np.ndarray | None,
    context: np.ndarray | None = None,
    *,
    interior: dict | None,
    blend: dict,
) -> np.ndarray:
    """Stage 2: the block's interior patches (``interior`` = :func:`_patch_block` arguments, or
    None when there are none), then :func:`_blend_block` with the spill and the neighbours' edges.

    The interior patches are needed by this block only, so they are made here and never wait in
    the scheduler's memory for a neighbour.
    """
    inner = None if interior is None else _patch_block(main, None, None, None, context, **interior)
    return _blend_block(inner, spill, top, left, corner, **blend)


def _take(x: np.ndarray, *, index: tuple) -> np.ndarray:
    """An input halo strip, copied (a view would keep the whole input block alive)."""
    return x[index].copy()


# --------------------------------------------------------------------------- graph


def _tile_chunks(n: int, stride: int, tiles: int) -> tuple[int, ...]:
    """Chunks of ``tiles`` whole tiles of ``stride`` pixels over ``n`` pixels (the last smaller)."""
    size = stride * tiles
    return tuple(min(size, n - a) for a in range(0, n, size))


def _tiles_per_block(chunks: Sequence[int], n: int, stride: int, target: int) -> int:
    """Tiles per block along an axis: the input chunk size (capped at ``target`` pixels) in whole
    tiles, and at most half the tiles, so that even a small image gives parallel blocks."""
    tiles = math.ceil(n / stride)
    return max(1, min(min(max(chunks), target) // stride, math.ceil(tiles / 2)))


def superresolve_array(
    x: da.Array,
    kernel: Kernel,
    *,
    patch: int,
    overlap: int,
    n_outputs: int,
    seed: int = 0,
    scale: int = 4,
    lead_keys: np.ndarray | None = None,
    band_scale: Sequence[float] | None = None,
    band_offset: Sequence[float] | None = None,
    band_nodata: Sequence[float] | None = None,
    block_tiles: tuple[int, int] | None = None,
    target_block: int | None = None,
    guide_channels: int | None = None,
    whole: int = 0,
    crop: bool = False,
    reference_first: bool = False,
    context: da.Array | None = None,
) -> da.Array:
    """Lazy patch-wise super-resolution of a dask array.

    Parameters
    ----------
    x : (*L, C, H, W) raw values (any real dtype), any chunks; L = leading dims (time, ...).
    kernel : patch function ``(N, C, P, P) float32, (N,) uint64 seeds -> (N, K, C, sP, sP) float32``.
    patch, overlap : LR pixels (0 <= overlap <= patch/2).
    n_outputs : K, planes per band the kernel returns.
    seed : base seed; patch noise seeds come from ``patch_seed(seed, lead_keys[l], i, j)``.
    scale : HR pixels per LR pixel along an axis.
    lead_keys : (*L,) integer seed keys of the leading elements (e.g. hashed time stamps);
        default: the flat index.
    band_scale, band_offset, band_nodata : per-band (C,) raw -> reflectance conversion
        ``raw * scale + offset``, raw == nodata -> NaN (NaN = none). Applied inside the tasks.
    block_tiles : tiles per output block (rows, cols); default from x's chunks, capped at
        ``target_block`` LR pixels (default :data:`TARGET_BLOCK_LR`) and at half the tiles.
    guide_channels : the first channels that decide a pixel's validity (None: all). A pixel is
        nodata where any of them is (a patch with no valid pixel skips the kernel); the channels
        after them carry their own nodata, per band (NaN never spreads to other channels), and
        are padded with NaN past the image edge.
    whole : how many of the leading dims, the last ones, are core dims of the model (e.g. 1 for
        ``time`` with a multi-date model): they are rechunked whole, the kernel gets patches
        (N, *those dims, C, P, P), and the output has none of them.
    crop : False: blend the patches over their overlaps (raised-cosine weights). True, for a fully
        convolutional model with a receptive-field halo of ``overlap / 2`` LR pixels (pass
        ``overlap = 2 * halo``): each output pixel is the value of the one patch whose centre
        ``[overlap/2, patch - overlap/2)`` covers it (the first/last patch along an axis reaching the
        image edge), bit for bit, unweighted; the rest of a patch is discarded, never read (NaN there
        never reaches the output). Up to the patch padding at the far image edges, the result is the
        model run on the whole image.
    reference_first : the first whole dim's first entry is the reference, the others extra looks:
        past the image edge, only the reference is padded by reflection, the others with NaN.
    context : optional (*L, ...) dask array, per leading element (e.g. each look's scene-level offset from its
        date, computed from the whole image): the kernel is then called as ``kernel(patches, seeds, context)``
        with each patch's row (N, ...); rechunked to ``x``'s leading chunks, whole along the rest.

    Returns
    -------
    (*L, K, C, scale*H, scale*W) float32 dask array; chunks: x's leading chunks, K and C whole,
    ``scale*g*S`` HR pixels spatially (the last smaller). Task names start with ``opensr-``.
    """
    if x.ndim < 3 + whole:
        raise ValueError(f"x must be (*L, C, H, W) with {whole} whole leading dims, got shape {x.shape}")
    *all_lead, c, h, w = x.shape
    lead_shape, lead_nd = tuple(all_lead[: len(all_lead) - whole]), len(all_lead) - whole
    grid = PatchGrid(h, w, patch, overlap, scale, crop)
    lead_keys = _lead_keys(lead_keys, lead_shape)
    conversion = tuple(None if v is None else np.asarray(v, dtype=np.float64)
                       for v in (band_scale, band_offset, band_nodata))
    target_block = TARGET_BLOCK_LR if target_block is None else target_block
    if block_tiles is None:
        block_tiles = (_tiles_per_block(x.chunks[-2], h, grid.stride, target_block),
                       _tiles_per_block(x.chunks[-1], w, grid.stride, target_block))
    ychunks = _tile_chunks(h, grid.stride, block_tiles[0])
    xchunks = _tile_chunks(w, grid.stride, block_tiles[1])
    x = x.rechunk((*x.chunks[:lead_nd], *((n,) for n in all_lead[lead_nd:]), (c,), ychunks, xchunks))

    context = None if context is None else _context_like(context, x.chunks[:lead_nd], lead_shape)
    token = tokenize(x.name, kernel, grid, n_outputs, seed, lead_keys, conversion, block_tiles, guide_channels, whole,
                     reference_first, None if context is None else context.name)
    args = dict(kernel=kernel, grid=grid, seed=seed, n_outputs=n_outputs, conversion=conversion,
                guide_channels=guide_channels)
    if whole:
        args = {**args, "whole": whole, **({"reference_first": True} if reference_first else {})}
    tasks = _BlockTasks({k: f"opensr-{k}-{token}" for k in _LAYER_DEPS}, x.name, ychunks, xchunks, grid, args,
                        context=None if context is None else (context.name, context.ndim - lead_nd))
    lead_offsets = [np.concatenate([[0], np.cumsum(ch)]) for ch in x.chunks[:lead_nd]]
    for lb in itertools.product(*[range(len(ch)) for ch in x.chunks[:lead_nd]]):
        keys = lead_keys[tuple(slice(off[i], off[i + 1]) for off, i in zip(lead_offsets, lb))]
        for bi, bj in itertools.product(range(len(ychunks)), range(len(xchunks))):
            tasks.add(lb, keys, bi, bj)
    out_chunks = (*x.chunks[:lead_nd], (n_outputs,), (c,),
                  tuple(scale * v for v in ychunks), tuple(scale * v for v in xchunks))
    meta = np.empty((0,) * (lead_nd + 4), dtype=np.float32)
    return da.Array(tasks.graph(x, context), tasks.names["blend"], out_chunks, meta=meta, dtype=np.float32)


def _lead_keys(lead_keys: np.ndarray | None, lead_shape: tuple[int, ...]) -> np.ndarray:
    """The (*L,) uint64 seed keys of the leading elements (default: the flat index), shape checked."""
    if lead_keys is None:
        lead_keys = np.arange(int(np.prod(lead_shape)), dtype=np.uint64).reshape(lead_shape)
    lead_keys = np.asarray(lead_keys, dtype=np.uint64)
    if lead_keys.shape != lead_shape:
        raise ValueError(f"lead_keys must have shape {lead_shape}, got {lead_keys.shape}")
    return lead_keys


def _context_like(context: da.Array, lead_chunks: tuple, lead_shape: tuple[int, ...]) -> da.Array:
    """``context`` (*L, ...) checked against the leading shape and chunked like the input's leading dims, whole
    along the rest (one block per leading block of the graph)."""
    if tuple(context.shape[: len(lead_shape)]) != lead_shape:
        raise ValueError(f"context must have the leading shape {lead_shape}, got {context.shape}")
    return context.rechunk((*lead_chunks, *((n,) for n in context.shape[len(lead_shape):])))


def _block_extents(chunks: tuple[int, ...], stride: int, n_patches: int) -> list[tuple[int, int, int, int]]:
    """Global (patch start, patch stop, first LR pixel, stop LR pixel) of each block along an axis."""
    out, start = [], 0
    for size in chunks:
        t0, t1 = start // stride, (start + size + stride - 1) // stride
        out.append((min(t0, n_patches), min(t1, n_patches), start, start + size))
        start += size
    return out


#: the graph's layers (task name ``opensr-<layer>-<token>``) and the layers each one reads ("x": the input)
_LAYER_DEPS: dict[str, list[str]] = {
    "halo-row": ["x"], "halo-col": ["x"], "halo-corner": ["x"],
    "spill": ["x", "halo-row", "halo-col", "halo-corner"],
    "edge-row": ["spill"], "edge-col": ["spill"], "edge-corner": ["spill"],
    "blend": ["x", "spill", "edge-row", "edge-col", "edge-corner"],
}


class _BlockTasks:
    """The tasks of :func:`superresolve_array`'s layers, added block by block (the module docstring's
    two stages), then assembled into a ``HighLevelGraph``.

    ``names``: layer -> task name; ``src``: the (rechunked) input's name; ``ychunks``/``xchunks``: its
    spatial chunks (whole tiles); ``task_args``: the patch arguments every block shares (kernel,
    grid, seed, n_outputs, conversion); ``context``: (name, number of non-leading dims) of the kernel's
    per-leading-element context array, or None.
    """

    def __init__(self, names: dict[str, str], src: str, ychunks: tuple[int, ...], xchunks: tuple[int, ...],
                 grid: PatchGrid, task_args: dict, context: tuple[str, int] | None = None) -> None:
        self.names, self.src, self.grid, self.task_args = names, src, grid, task_args
        self.context = context
        stride, ov = grid.stride, grid.overlap
        self.yb = _block_extents(ychunks, stride, grid.rows)
        self.xb = _block_extents(xchunks, stride, grid.cols)
        self.crop = grid.scale * stride  # HR rows/cols of a patch before its spill into the next block
        self.halos = {
            "halo-row": functools.partial(_take, index=(Ellipsis, slice(0, ov), slice(None))),
            "halo-col": functools.partial(_take, index=(Ellipsis, slice(0, ov))),
            "halo-corner": functools.partial(_take, index=(Ellipsis, slice(0, ov), slice(0, ov))),
        }
        self.layers: dict[str, dict] = {k: {} for k in names}

    def add(self, lb: tuple[int, ...], keys: np.ndarray, bi: int, bj: int) -> None:
        """Block (bi, bj) of the leading block ``lb`` (seed keys ``keys``): halos, spill, blend."""
        src = (self.src, *lb, *(0,) * self.task_args.get("whole", 0), 0, bi, bj)
        origin = (self.yb[bi][2], self.xb[bj][2])
        patch_args = dict(origin=origin, keys=keys, **self.task_args)
        ctx = None if self.context is None else (self.context[0], *lb, *(0,) * self.context[1])
        self._add_halos(src, lb, bi, bj)
        sr, sc = self._add_spill(src, lb, bi, bj, patch_args, ctx)
        self._add_blend(src, lb, bi, bj, (sr, sc), patch_args, ctx)

    def _add_halos(self, src: tuple, lb: tuple[int, ...], bi: int, bj: int) -> None:
        """Halo strips of this input block, for the spill patches of the previous blocks."""
        if not self.grid.overlap:
            return
        for layer, wanted in (("halo-row", bi > 0), ("halo-col", bj > 0), ("halo-corner", bi > 0 and bj > 0)):
            if wanted:
                self.layers[layer][(self.names[layer], *lb, bi, bj)] = (self.halos[layer], src)

    def _add_spill(self, src: tuple, lb: tuple[int, ...], bi: int, bj: int, patch_args: dict,
                   ctx: tuple | None = None) -> tuple[bool, bool]:
        """The block's last patch row / column, which spill into the next blocks: computed apart
        ("spill", needed by 2-4 blends), with the edges the next blocks take from them. Returns
        whether the block spills into the next block row and the next block column. ``ctx``: the context block's key
        (a dependency of the patches), or None."""
        names, ov = self.names, self.grid.overlap
        (p0, p1, _, _), (q0, q1, _, _) = self.yb[bi], self.xb[bj]
        sr = bi + 1 < len(self.yb) and ov > 0 and p1 > p0 and q1 > q0
        sc = bj + 1 < len(self.xb) and ov > 0 and p1 > p0 and q1 > q0
        if not (sr or sc):
            return sr, sc
        rects = ((p1 - 1, p1, q0, q1),) * sr + ((p0, p1 - sr, q1 - 1, q1),) * sc
        spill_key = (names["spill"], *lb, bi, bj)
        self.layers["spill"][spill_key] = (
            functools.partial(_patch_block, rects=rects, **patch_args),
            src,
            (names["halo-row"], *lb, bi + 1, bj) if sr else None,
            (names["halo-col"], *lb, bi, bj + 1) if sc else None,
            (names["halo-corner"], *lb, bi + 1, bj + 1) if sr and sc else None,
            ctx,
        )
        stops = {}
        if self.grid.crop:  # the next blocks read the spill patches' centres only
            hy, hx = self.grid.support(p1 - 1, self.grid.rows)[1], self.grid.support(q1 - 1, self.grid.cols)[1]
            stops = {"row": dict(stop=(hy, None)), "col": dict(stop=(None, hx)), "corner": dict(stop=(hy, hx))}
        for which, wanted, has_row in (("row", sr, True), ("col", sc, sr), ("corner", sr and sc, True)):
            if wanted:
                self.layers[f"edge-{which}"][(names[f"edge-{which}"], *lb, bi, bj)] = (
                    functools.partial(_edge, which=which, has_row=has_row, crop=self.crop, **stops.get(which, {})),
                    spill_key)
        return sr, sc

    def _add_blend(self, src: tuple, lb: tuple[int, ...], bi: int, bj: int, spills: tuple[bool, bool],
                   patch_args: dict, ctx: tuple | None = None) -> None:
        """The block's interior patches (needed by this block only: made inside the blend task, so
        results waiting for a later blend are thin) and the blend with its spill and the previous
        blocks' edges that reach into it; ``ctx`` as in :meth:`_add_spill`."""
        names, layers, ov = self.names, self.layers, self.grid.overlap
        (p0, p1, r0, r1), (q0, q1, c0, c1) = self.yb[bi], self.xb[bj]
        sr, sc = spills
        inner = (p0, p1 - sr, q0, q1 - sc)
        has_inner = inner[1] > inner[0] and inner[3] > inner[2]
        prev_r = bi > 0 and ov > 0 and (names["edge-row"], *lb, bi - 1, bj) in layers["edge-row"]
        prev_c = bj > 0 and ov > 0 and (names["edge-col"], *lb, bi, bj - 1) in layers["edge-col"]
        prev_rc = (names["edge-corner"], *lb, bi - 1, bj - 1) in layers["edge-corner"]
        finish = functools.partial(
            _finish_block,
            interior=dict(rects=(inner,), **patch_args) if has_inner else None,
            blend=dict(grid=self.grid, patches=(p0, p1, q0, q1), spills=(sr, sc), rows=(r0, r1), cols=(c0, c1)),
        )
        layers["blend"][(names["blend"], *lb, 0, 0, bi, bj)] = (
            finish,
            src,
            (names["spill"], *lb, bi, bj) if sr or sc else None,
            (names["edge-row"], *lb, bi - 1, bj) if prev_r else None,
            (names["edge-col"], *lb, bi, bj - 1) if prev_c else None,
            (names["edge-corner"], *lb, bi - 1, bj - 1) if prev_rc else None,
            ctx,
        )

    def graph(self, x: da.Array, context: da.Array | None = None) -> HighLevelGraph:
        """``x``'s graph (and ``context``'s) plus the non-empty layers (halo and edge layers are empty
        without overlap)."""
        names = {**self.names, "x": x.__dask_layers__()[0]}
        hlg_layers = dict(x.dask.layers)
        hlg_deps = dict(x.dask.dependencies)
        if context is not None:
            hlg_layers.update(context.dask.layers)
            hlg_deps.update(context.dask.dependencies)
        for k, tasks in self.layers.items():
            if tasks:
                hlg_layers[names[k]] = MaterializedLayer(tasks)
                hlg_deps[names[k]] = {names[d] for d in _LAYER_DEPS[k] if d == "x" or self.layers[d]}
                if context is not None and k in ("spill", "blend"):
                    hlg_deps[names[k]].add(context.__dask_layers__()[0])
        return HighLevelGraph(hlg_layers, hlg_deps)
