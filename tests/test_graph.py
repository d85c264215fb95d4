"""The dask layer with a numpy stand-in kernel: grid, halos, blending, seeds, nodata, laziness."""

from __future__ import annotations

import pickle
import threading

import dask
import dask.array as da
import numpy as np
import pytest
from conftest import raise_if_dask_computes, seam_ratio
from hypothesis import given, settings
from hypothesis import strategies as st

from xr_opensr import _graph
from xr_opensr._graph import PatchGrid, patch_seed, superresolve_array

P, OV, S4 = 16, 4, 4  # patch, overlap, scale
_CALLS = {"patches": 0, "calls": 0}
_LOCK = threading.Lock()


def standin(patches: np.ndarray, seeds: np.ndarray, bias: float = 0.0) -> np.ndarray:
    """Deterministic numpy kernel: nearest 4x upsampling + seeded noise (+ a per-patch bias).

    (N, C, P, P), (N,) -> (N, 2, C, 4P, 4P): plane 0 "mean", plane 1 "std" (NaN under nodata).
    """
    with _LOCK:
        _CALLS["patches"] += len(patches)
        _CALLS["calls"] += 1
    n, c, p, _ = patches.shape
    assert p == P and patches.dtype == np.float32 and seeds.dtype == np.uint64
    invalid = np.isnan(patches).any(axis=1, keepdims=True)  # nodata in any band: NaN in all
    up = np.where(invalid, np.nan, patches).repeat(S4, axis=2).repeat(S4, axis=3)
    out = np.empty((n, 2, c, S4 * p, S4 * p), dtype=np.float32)
    for k, s in enumerate(seeds):
        rng = np.random.default_rng(int(s))
        noise = rng.normal(0, 0.01, up.shape[1:]).astype(np.float32)
        offset = np.float32(rng.uniform(-bias, bias)) if bias else np.float32(0)
        out[k, 0] = up[k] + noise + offset
        out[k, 1] = np.where(np.isnan(up[k]), np.nan, np.abs(noise))
    return out


def biased(patches: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    return standin(patches, seeds, bias=0.2)


def reset_calls() -> None:
    _CALLS.update(patches=0, calls=0)


def scene(shape, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.1 + 0.2 * rng.random(shape)).astype(np.float32)


def reference(x: np.ndarray, kernel, patch=P, overlap=OV, seed=0, keys=None) -> np.ndarray:
    """Direct global implementation (float64): every patch of the grid, raised-cosine blend."""
    *lead, c, h, w = x.shape
    flat = x.reshape(-1, c, h, w)
    keys = np.arange(flat.shape[0]) if keys is None else np.asarray(keys).reshape(-1)
    stride = patch - overlap
    ny = 1 if h <= patch else int(np.ceil((h - overlap) / stride))
    nx = 1 if w <= patch else int(np.ceil((w - overlap) / stride))
    m = S4 * overlap
    ramp = np.sin(0.5 * np.pi * (np.arange(m) + 0.5) / m) ** 2

    def win(i, n):
        v = np.ones(S4 * patch)
        if overlap and i > 0:
            v[:m] = ramp
        if overlap and i < n - 1:
            v[-m:] = ramp[::-1]
        return v

    acc = np.zeros((flat.shape[0], 2, c, S4 * h + S4 * patch, S4 * w + S4 * patch))
    wsum = np.zeros(acc.shape[-2:])
    for i in range(ny):
        for j in range(nx):
            sub = flat[:, :, i * stride : i * stride + patch, j * stride : j * stride + patch]
            pad = np.stack([_graph._pad_patch(s, patch) for s in sub])
            seeds = np.array([patch_seed(seed, int(k), i, j) for k in keys], dtype=np.uint64)
            out = kernel(pad.astype(np.float32), seeds)
            wgt = np.multiply.outer(win(i, ny), win(j, nx))
            ys, xs = slice(S4 * i * stride, S4 * (i * stride + patch)), slice(S4 * j * stride, S4 * (j * stride + patch))
            acc[..., ys, xs] += out * wgt
            wsum[ys, xs] += wgt
    res = acc[..., : S4 * h, : S4 * w] / wsum[: S4 * h, : S4 * w]
    return res.reshape(*lead, 2, c, S4 * h, S4 * w)


def run(x, chunks, kernel=standin, scheduler="sync", **kw):
    arr = da.from_array(x, chunks=chunks)
    out = superresolve_array(arr, kernel, patch=kw.pop("patch", P), overlap=kw.pop("overlap", OV), n_outputs=2, **kw)
    return out, out.compute(scheduler=scheduler)


# --------------------------------------------------------------------------- grid, windows, seeds


@pytest.mark.parametrize(("n", "expected"), [(1, 1), (16, 1), (17, 2), (28, 2), (29, 3), (100, 8)])
def test_patch_count(n, expected):
    grid = PatchGrid(n, n, P, OV)
    assert grid.rows == expected
    last = (grid.rows - 1) * grid.stride
    assert last + P >= n and (grid.rows == 1 or last + OV < n)  # covers all, no useless patch


def test_windows_are_a_partition_of_unity():
    grid = PatchGrid(100, 100, P, OV)
    total = np.zeros(S4 * (grid.rows * grid.stride + OV))
    for i in range(grid.rows):
        total[S4 * i * grid.stride : S4 * (i * grid.stride + P)] += grid.window(i, grid.rows)
    np.testing.assert_allclose(total[: S4 * 100], 1.0, atol=1e-6)
    w = grid.window(1, grid.rows)
    assert w[0] > 0 and np.all(np.diff(w[: S4 * OV]) > 0) and w[S4 * OV : -S4 * OV].min() == 1


def test_bad_overlap_rejected():
    with pytest.raises(ValueError, match="overlap"):
        PatchGrid(10, 10, 16, 9)


def test_patch_seed_is_stable_and_distinct():
    assert patch_seed(0, 0, 0, 0) == patch_seed(0, 0, 0, 0)
    seeds = {patch_seed(s, k, i, j) for s in (0, 1) for k in (0, 7) for i in range(3) for j in range(3)}
    assert len(seeds) == 36 and all(0 <= v < 2**63 for v in seeds)
    assert patch_seed(0, 0, 1, 2) == 1876953174983354445  # pinned: a change alters every result


# --------------------------------------------------------------------------- values


def test_matches_direct_reference():
    x = scene((2, 4, 41, 30))
    _, got = run(x, (1, 4, 41, 30), seed=5)
    np.testing.assert_allclose(got, reference(x, standin, seed=5), rtol=0, atol=2e-6)


@pytest.mark.parametrize("chunks", [
    (2, 4, 53, 47),                     # one chunk
    (1, 2, 3, 3),                       # chunks smaller than the overlap
    (1, 4, (10, 1, 30, 12), (5, 40, 2)),  # uneven
    (2, 4, 12, 24),                     # aligned with the tiles
])
def test_chunk_invariant_bit_identical(chunks):
    x = scene((2, 4, 53, 47), seed=1)
    x[1, :, 5:9, 30:33] = np.nan
    _, ref = run(x, (2, 4, 53, 47), block_tiles=(100, 100))
    _, got = run(x, chunks, scheduler="threads")
    np.testing.assert_array_equal(got, ref)


@settings(max_examples=60, deadline=None)
@given(
    h=st.integers(1, 45), w=st.integers(1, 45), overlap=st.integers(0, 8),
    ty=st.integers(1, 4), tx=st.integers(1, 4), lead=st.integers(1, 2),
)
def test_any_grid_and_blocking_matches_reference(h, w, overlap, ty, tx, lead):
    """Property: every image size, overlap and block layout (orphan tiles, empty blocks, ...)
    gives the direct global result, and bit-identically the one-block result."""
    x = scene((lead, 4, h, w), seed=h * 100 + w)
    _, got = run(x, (1, 4, 7, 9), overlap=overlap, block_tiles=(ty, tx))
    _, one = run(x, x.shape, overlap=overlap, block_tiles=(100, 100))
    np.testing.assert_array_equal(got, one)
    np.testing.assert_allclose(got, reference(x, standin, overlap=overlap), atol=2e-6)


@pytest.mark.parametrize("overlap", [0, 1, 8])
def test_overlap_extremes_match_reference(overlap):
    x = scene((4, 37, 29), seed=2)
    _, got = run(x, (4, 5, 7), overlap=overlap)
    np.testing.assert_allclose(got, reference(x, standin, overlap=overlap), atol=2e-6)


@pytest.mark.parametrize("shape", [(1, 1), (1, 5), (3, 17), (16, 16), (17, 16)])
def test_small_inputs_are_padded(shape):
    x = scene((4, *shape), seed=3)
    out, got = run(x, (4, 1, 1))
    assert got.shape == (2, 4, S4 * shape[0], S4 * shape[1])
    np.testing.assert_allclose(got, reference(x, standin), atol=2e-6)
    np.testing.assert_allclose(got[0], x.repeat(4, 1).repeat(4, 2), atol=0.06)


def test_output_chunks_are_whole_tiles_and_zarr_friendly():
    x = scene((3, 4, 50, 61))
    out, _ = run(x, (1, 4, 7, 100))
    stride = P - OV
    assert out.chunks[0] == (1, 1, 1) and out.chunks[1] == (2,) and out.chunks[2] == (4,)
    for chunks in out.chunks[-2:]:
        assert all(c % (S4 * stride) == 0 for c in chunks[:-1])
        assert chunks[-1] <= chunks[0]  # uniform but the last: Zarr accepts it


def test_seeds_follow_lead_keys_not_position():
    x = scene((2, 4, 20, 20))
    _, a = run(x, (1, 4, 20, 20), lead_keys=np.array([11, 22], dtype=np.uint64))
    _, b = run(x[::-1].copy(), (1, 4, 20, 20), lead_keys=np.array([22, 11], dtype=np.uint64))
    np.testing.assert_array_equal(a, b[::-1])
    _, c = run(x, (1, 4, 20, 20), lead_keys=np.array([11, 23], dtype=np.uint64))
    np.testing.assert_array_equal(a[0], c[0])
    assert not np.array_equal(a[1], c[1])


def test_dn_conversion_and_declared_nodata():
    x = np.round(scene((4, 20, 20)) * 10000).astype(np.uint16)
    x[:, 3, 4] = 0
    _, got = run(x, (4, 20, 20), band_scale=[1e-4] * 4, band_offset=[0.0] * 4, band_nodata=[0] * 4)
    refl = (x * 1e-4).astype(np.float32)
    refl[:, 3, 4] = np.nan
    _, ref = run(refl, (4, 20, 20))
    assert np.isnan(got[:, :, 12:16, 16:20]).all()
    np.testing.assert_array_equal(got, ref)


# --------------------------------------------------------------------------- seams


def test_blend_removes_seams():
    x = scene((4, 60, 60), seed=4)
    _, blended = run(x, (4, 30, 30), kernel=biased)
    _, hard = run(x, (4, 30, 30), kernel=biased, overlap=0)
    assert seam_ratio(hard[0], P, P) > 1.5  # the metric sees seams ...
    assert seam_ratio(blended[0], P - OV, P) <= 1.2  # ... and the blend removes them


# --------------------------------------------------------------------------- nodata


def test_nodata_stays_put_and_all_nodata_patches_skip_the_kernel():
    x = scene((4, 40, 40), seed=6)
    x[:, :16, :16] = np.nan  # patch (0, 0) entirely nodata
    x[2, 30, 31] = np.nan  # a single pixel in one band
    reset_calls()
    _, got = run(x, (4, 13, 13))
    grid = PatchGrid(40, 40, P, OV)
    assert _CALLS["patches"] == grid.n_patches - 1
    invalid = ~np.isfinite(x).all(axis=0)
    hr_invalid = invalid.repeat(S4, 0).repeat(S4, 1)
    for plane in got:
        np.testing.assert_array_equal(np.isnan(plane).any(axis=0), hr_invalid)
        np.testing.assert_array_equal(np.isnan(plane).all(axis=0), hr_invalid)


def test_all_nodata_calls_no_kernel():
    x = np.full((4, 30, 30), np.nan, np.float32)
    reset_calls()
    _, got = run(x, (4, 10, 10))
    assert _CALLS["calls"] == 0 and np.isnan(got).all()


# --------------------------------------------------------------------------- graph properties


def test_lazy_once_per_patch_and_named():
    x = da.from_array(scene((2, 4, 50, 38)), chunks=(1, 4, 30, 30))
    with raise_if_dask_computes():
        out = superresolve_array(x, standin, patch=P, overlap=OV, n_outputs=2)
        mean, std = out[:, 0], out[:, 1]
    reset_calls()
    dask.compute(mean, std, scheduler="threads")
    assert _CALLS["patches"] == 2 * PatchGrid(50, 38, P, OV).n_patches
    ours = [k for k in out.dask.layers if k.startswith("opensr-")]
    assert {k.rsplit("-", 1)[0] for k in ours} >= {"opensr-spill", "opensr-edge-row", "opensr-blend", "opensr-halo-row"}
    assert out.name.startswith("opensr-blend-")
    again = superresolve_array(x, standin, patch=P, overlap=OV, n_outputs=2)
    assert again.name == out.name  # tokenize: same call, same graph


def test_tasks_are_small():
    x = da.from_array(scene((1, 4, 50, 50)), chunks=(1, 4, 25, 25))
    out = superresolve_array(x, standin, patch=P, overlap=OV, n_outputs=2)
    graph = dict(out.__dask_graph__())
    sizes = [len(pickle.dumps(v)) for k, v in graph.items() if k[0].startswith("opensr-")]
    assert sizes and max(sizes) < 20_000


def median_kernel(patches: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """A kernel that consumes a whole ``time`` dim: (N, T, C, P, P) -> (N, 2, C, 4P, 4P), per pixel
    the median over the valid dates of the nearest upsampling, and the count of valid dates."""
    assert patches.ndim == 5 and patches.dtype == np.float32
    up = patches.repeat(S4, axis=-2).repeat(S4, axis=-1)
    with np.errstate(all="ignore"), __import__("warnings").catch_warnings():
        __import__("warnings").simplefilter("ignore", RuntimeWarning)
        med = np.nanmedian(up, axis=1)
    count = np.isfinite(up).sum(axis=1).astype(np.float32)
    return np.stack([med, count], axis=1)


@pytest.mark.parametrize("chunks", [(1, 1, -1, 8, 8), (2, 3, -1, 16, 12), (-1, -1, -1, -1, -1)])
def test_whole_core_dims_reach_the_kernel_whole_and_leave_the_output(chunks):
    """``whole=1``: the last leading dim (time) is a core dim of the model: every block holds all of it
    whatever the input chunks (rechunked), the kernel sees (N, T, C, P, P), the output has no time dim,
    and the result is chunk-invariant and equal to the kernel on the whole image."""
    x = scene((2, 3, 2, 24, 20))  # (other, time, band, y, x)
    x[0, 1, :, :6, :5] = np.nan  # one date missing in a corner: the other dates still count there
    x[1, :, :, 10:12, 3:4] = np.nan  # every date missing: nodata
    out = superresolve_array(da.from_array(x, chunks=chunks), median_kernel, patch=P, overlap=0,
                             n_outputs=2, whole=1, lead_keys=np.arange(2, dtype=np.uint64))
    assert out.shape == (2, 2, 2, 96, 80)
    res = out.compute()
    full = median_kernel(x, np.zeros(2, np.uint64))  # per pixel: the kernel on the whole image
    np.testing.assert_array_equal(res[:, 0], full[:, 0])  # overlap 0: patches tile the image exactly
    assert (res[0, 1, :, :24, :20] == 2).all() and (res[0, 1, :, 24:, 20:] == 3).all()
    assert np.isnan(res[1, 0, :, 40:48, 12:16]).all()
    other = superresolve_array(da.from_array(x, chunks=(1, 1, 1, 24, 20)), median_kernel, patch=P, overlap=4,
                               n_outputs=2, whole=1, lead_keys=np.arange(2, dtype=np.uint64)).compute()
    again = superresolve_array(da.from_array(x, chunks=(2, 3, 2, 8, 8)), median_kernel, patch=P, overlap=4,
                               n_outputs=2, whole=1, lead_keys=np.arange(2, dtype=np.uint64)).compute()
    np.testing.assert_array_equal(other, again)


def context_kernel(patches: np.ndarray, seeds: np.ndarray, context: np.ndarray) -> np.ndarray:
    """(N, T, C, P, P) looks, (N, T, 2) context -> (N, 2, C, 4P, 4P): the looks' mean plus the context's looks 1..
    first components summed; then look 0's second component, everywhere."""
    mean = np.nanmean(patches, axis=1) + context[:, 1:, 0].sum(axis=1)[:, None, None, None]
    up = np.repeat(np.repeat(mean, 4, axis=-2), 4, axis=-1)
    const = np.ones_like(up) * context[:, 0, 1][:, None, None, None]
    return np.stack([up, const], axis=1).astype(np.float32)


@pytest.mark.parametrize("chunks", [(1, 1, -1, 8, 8), (-1, -1, -1, -1, -1)])
def test_context_reaches_each_patch_with_its_leading_element(chunks):
    """``context`` (*L, ...) (e.g. each look's scene-level offset, computed from the whole image): the kernel
    gets each patch's row, whatever the chunking of the input and of the context; tasks read it as a dependency."""
    x = scene((2, 3, 2, 24, 20))  # (other, time, band, y, x)
    ctx = np.stack([np.stack([np.full(3, 10.0 * (i + 1)), np.arange(3.0) + i], axis=-1) for i in range(2)])  # (2, 3, 2)
    outs = []
    for ctx_chunks in ((1, 3, 2), (2, 1, 1)):
        out = superresolve_array(da.from_array(x, chunks=chunks), context_kernel, patch=P, overlap=4, n_outputs=2,
                                 whole=1, context=da.from_array(ctx, chunks=ctx_chunks))
        with raise_if_dask_computes():
            out = out + 0
        outs.append(out.compute())
    np.testing.assert_array_equal(outs[0], outs[1])
    want = np.repeat(np.repeat(np.nanmean(x, axis=1), 4, axis=-2), 4, axis=-1) + np.array([20.0, 40.0])[:, None, None, None]
    np.testing.assert_allclose(outs[0][:, 0], want, rtol=1e-6)
    assert (outs[0][0, 1] == 0).all() and (outs[0][1, 1] == 1).all()
    with pytest.raises(ValueError, match="leading shape"):
        superresolve_array(da.from_array(x), context_kernel, patch=P, overlap=4, n_outputs=2, whole=1,
                           context=da.from_array(ctx[:1]))


# --------------------------------------------------------------------------- crop (convolutional models)

HALO = 2  # LR pixels: the receptive-field halo of conv_net
BOXES = 4  # 5x5 HR box passes in conv_net: 2 HR pixels each, 8 in all = HALO LR pixels


def conv_net(lr: np.ndarray) -> np.ndarray:
    """A stand-in fully convolutional network of any input size, receptive field ``HALO`` LR pixels:
    (N, C, h, w) float32 -> (N, 2, C, 4h, 4w) float32.

    Nodata (NaN in any band) is filled with 0 (a local fill) and is NaN in the output; the bands are
    mixed, LR-reflect padded by ``HALO``, upsampled (nearest) and smoothed by ``BOXES`` 'valid' 5x5
    box filters in HR, each a sum of shifted slices in a fixed order, so every output pixel is the
    same float32 operations on the same values whatever the input size (the whole image or a patch).
    Plane 0 "mean", plane 1 "std" (|mean - upsampled input|).
    """
    invalid = np.isnan(lr).any(axis=1, keepdims=True)
    x = np.where(invalid, np.float32(0), lr)
    x = x + np.float32(0.25) * x.mean(axis=1, keepdims=True, dtype=np.float32)
    pad = ((0, 0), (0, 0), (HALO, HALO), (HALO, HALO))
    up = np.pad(x, pad, mode="reflect").repeat(S4, axis=2).repeat(S4, axis=3)
    for _ in range(BOXES):
        n, m = up.shape[-2] - 4, up.shape[-1] - 4
        acc = np.zeros((*up.shape[:-2], n, m), np.float32)
        for dy in range(5):
            for dx in range(5):
                acc += up[..., dy : dy + n, dx : dx + m]
        up = acc * np.float32(1 / 25)
    c0 = S4 * HALO - 2 * BOXES  # HR padding left after the boxes
    mean = up[..., c0 : up.shape[-2] - c0, c0 : up.shape[-1] - c0]
    hr_invalid = invalid.repeat(S4, axis=2).repeat(S4, axis=3)
    mean = np.where(hr_invalid, np.float32(np.nan), mean)
    std = np.abs(mean - lr.repeat(S4, axis=2).repeat(S4, axis=3))
    return np.stack([mean, std], axis=1).astype(np.float32)


def conv_kernel(patches: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """``conv_net`` as a graph kernel (counts its patches and calls)."""
    with _LOCK:
        _CALLS["patches"] += len(patches)
        _CALLS["calls"] += 1
    assert patches.dtype == np.float32 and seeds.dtype == np.uint64
    return conv_net(patches)


def border_nan_kernel(patches: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """``conv_net`` with NaN in every patch's outer ``HALO`` LR pixels (a model invalid in its halo)."""
    out = conv_kernel(patches, seeds)
    b = S4 * HALO
    out[..., :b, :] = out[..., -b:, :] = np.nan
    out[..., :, :b] = out[..., :, -b:] = np.nan
    return out


def whole_image(x: np.ndarray) -> np.ndarray:
    """conv_net run on the whole image: (*L, C, H, W) -> (*L, 2, C, 4H, 4W)."""
    *lead, c, h, w = x.shape
    return conv_net(x.reshape(-1, c, h, w)).reshape(*lead, 2, c, S4 * h, S4 * w)


def unpadded(n: int, patch: int, overlap: int, halo: int = HALO) -> np.ndarray:
    """(4n,) bool along an axis of n LR pixels: the HR pixels whose receptive field (``halo`` LR
    pixels) does not reach the padding the graph gives the last patch (when the image ends less
    than ``halo`` pixels before the patch: the network's padding then differs from the whole
    image's). Everywhere else crop equals the whole-image run, bit for bit."""
    grid = PatchGrid(n, n, patch, overlap)
    last = (grid.count(n) - 1) * grid.stride
    ok = np.ones(n, bool)
    if n - last < patch:
        ok[max(0, last + patch - halo) :] = False
    return ok.repeat(S4)


def run_crop(x, chunks, kernel=conv_kernel, scheduler="sync", patch=P, overlap=2 * HALO, **kw):
    arr = da.from_array(x, chunks=chunks)
    out = superresolve_array(arr, kernel, patch=patch, overlap=overlap, n_outputs=2, crop=True, **kw)
    return out, out.compute(scheduler=scheduler)


def assert_whole_image(got: np.ndarray, x: np.ndarray, patch=P, overlap=2 * HALO) -> None:
    """``got`` equals conv_net on the whole image, bit for bit, off the far-edge padding zone."""
    h, w = x.shape[-2:]
    ok = np.logical_and.outer(unpadded(h, patch, overlap), unpadded(w, patch, overlap))
    np.testing.assert_array_equal(got[..., ok], whole_image(x)[..., ok])


@pytest.mark.parametrize("n", [1, 7, 16, 17, 40, 53, 64])
def test_crop_windows_tile_the_axis(n):
    """Crop windows are 0/1 and every HR pixel of the axis is in exactly one patch's support."""
    grid = PatchGrid(n, n, P, 2 * HALO, crop=True)
    total = np.zeros(S4 * (grid.rows * grid.stride + grid.overlap), np.int64)
    for i in range(grid.rows):
        w = grid.window(i, grid.rows)
        lo, hi = grid.support(i, grid.rows)
        assert set(np.unique(w)) <= {0, 1} and w[lo:hi].all() and not w[:lo].any() and not w[hi:].any()
        total[S4 * i * grid.stride : S4 * (i * grid.stride + P)] += w.astype(np.int64)
    assert (total[: S4 * n] == 1).all()
    assert grid.support(0, grid.rows)[0] == 0 and grid.support(grid.rows - 1, grid.rows)[1] == S4 * P


@pytest.mark.parametrize("shape", [(2, 4, 40, 40), (4, 53, 47), (4, 16, 28), (4, 5, 3), (1, 4, 64, 17)])
def test_crop_equals_the_network_on_the_whole_image(shape):
    """crop=True with overlap = 2 * halo: the network run on the whole image, bit for bit (off the
    padding of a last patch that ends within ``halo`` of the image edge), so no seam anywhere."""
    x = scene(shape, seed=sum(shape))
    _, got = run_crop(x, (*shape[:-2], 9, 11))
    assert_whole_image(got, x)
    if shape[-2:] == (40, 40):  # 40 = 3 strides + overlap: the last patch fits, equal everywhere
        assert unpadded(40, P, 2 * HALO).all()
        np.testing.assert_array_equal(got, whole_image(x))
    np.testing.assert_allclose(got, whole_image(x), atol=0.05)  # the padding zone only differs a little


def test_crop_has_no_seams():
    """The crop borders (HR ``s*(k*S + O/2)``) are invisible with a convolutional kernel; the seam
    metric sees them with a kernel that is not (a per-patch bias)."""
    x = scene((4, 60, 60), seed=4)
    cut = S4 * HALO  # shift so that the crop borders fall on the metric's patch borders s*k*S
    _, conv = run_crop(x, (4, 30, 30))
    _, hard = run_crop(x, (4, 30, 30), kernel=biased)
    assert seam_ratio(hard[0, :, cut:, cut:], P - 2 * HALO, P) > 1.5
    assert seam_ratio(conv[0, :, cut:, cut:], P - 2 * HALO, P) <= 1.1


@settings(max_examples=40, deadline=None)
@given(
    h=st.integers(1, 45), w=st.integers(1, 45), half=st.integers(HALO, 6), patch=st.sampled_from([12, 16]),
    ty=st.integers(1, 4), tx=st.integers(1, 4), lead=st.integers(1, 2),
)
def test_crop_any_grid_and_blocking_is_the_whole_image(h, w, half, patch, ty, tx, lead):
    """Property: every image size, overlap >= 2 * halo and block layout gives, bit for bit, the
    one-block result, with the threaded scheduler too, and the whole-image network."""
    x = scene((lead, 3, h, w), seed=h * 100 + w)
    x[..., : h // 3, w // 2 : w // 2 + 2] = np.nan
    ov = min(2 * half, patch // 2)
    _, got = run_crop(x, (1, 3, 7, 9), patch=patch, overlap=ov, block_tiles=(ty, tx), scheduler="threads")
    _, one = run_crop(x, x.shape, patch=patch, overlap=ov, block_tiles=(100, 100))
    np.testing.assert_array_equal(got, one)
    assert_whole_image(got, x, patch=patch, overlap=ov)


@pytest.mark.parametrize("chunks", [(2, 4, 53, 47), (1, 2, 3, 3), (1, 4, (10, 1, 30, 12), (5, 40, 2)), (2, 4, 12, 24)])
def test_crop_chunk_and_scheduler_invariant(chunks):
    x = scene((2, 4, 53, 47), seed=1)
    x[1, :, 5:9, 30:33] = np.nan
    _, ref = run_crop(x, (2, 4, 53, 47), block_tiles=(100, 100))
    _, got = run_crop(x, chunks, scheduler="threads")
    np.testing.assert_array_equal(got, ref)


def test_crop_computes_each_patch_once_and_each_pixel_from_one_patch():
    x = da.from_array(scene((2, 4, 50, 38)), chunks=(1, 4, 30, 30))
    with raise_if_dask_computes():
        out = superresolve_array(x, conv_kernel, patch=P, overlap=2 * HALO, n_outputs=2, crop=True)
        mean, std = out[:, 0], out[:, 1]
    reset_calls()
    dask.compute(mean, std, scheduler="threads")
    grid = PatchGrid(50, 38, P, 2 * HALO, crop=True)
    assert _CALLS["patches"] == 2 * grid.n_patches
    blended = superresolve_array(x, conv_kernel, patch=P, overlap=2 * HALO, n_outputs=2)
    assert out.name.startswith("opensr-blend-") and out.name != blended.name  # crop is part of the token
    assert superresolve_array(x, conv_kernel, patch=P, overlap=2 * HALO, n_outputs=2, crop=True).name == out.name
    # pixels: each output pixel once, plus the halo's share
    area = sum(np.diff(grid.support(i, grid.rows)) for i in range(grid.rows))
    assert area[0] >= S4 * 50 and area[0] - S4 * 50 < S4 * P  # the last patch's support reaches past the image


def test_crop_nodata_and_discarded_borders_never_reach_the_output():
    """NaN in a patch's discarded border (a model invalid in its halo, or nodata next to the patch)
    never reaches the output; nodata stays where it is; all-nodata patches skip the kernel."""
    x = scene((4, 40, 40), seed=6)
    x[:, :16, :16] = np.nan  # patch (0, 0) entirely nodata
    x[2, 30, 31] = np.nan  # a single pixel in one band
    x[:, 13, 20] = np.nan  # in the border of patches (0, *) and the centre of patches (1, *)
    reset_calls()
    _, got = run_crop(x, (4, 13, 13))
    assert _CALLS["patches"] == PatchGrid(40, 40, P, 2 * HALO).n_patches - 1
    hr_invalid = (~np.isfinite(x).all(axis=0)).repeat(S4, 0).repeat(S4, 1)
    for plane in got:
        np.testing.assert_array_equal(np.isnan(plane).any(axis=0), hr_invalid)
        np.testing.assert_array_equal(np.isnan(plane).all(axis=0), hr_invalid)
    full = whole_image(x)
    np.testing.assert_array_equal(got, full)  # 40 x 40: no padding zone
    # a model that is NaN over its whole halo: only the image's own border (kept by the first and
    # last patches) shows it; the discarded borders inside the image are never read
    _, bad = run_crop(x, (4, 13, 13), kernel=border_nan_kernel)
    b = S4 * HALO
    np.testing.assert_array_equal(bad[..., b:-b, b:-b], full[..., b:-b, b:-b])
    _, blended = run(x, (4, 13, 13), kernel=border_nan_kernel, overlap=2 * HALO)
    assert np.isnan(blended[..., b:-b, b:-b]).sum() > np.isnan(full[..., b:-b, b:-b]).sum()  # a blend would


def test_crop_edges_carry_only_the_centre_rows():
    """The edges a block hands to the next blocks hold the spill patches' centre rows/columns that
    reach into them (s*O/2), not the whole overlap (s*O); the image's last patch keeps all its rows."""
    x = da.from_array(scene((1, 4, 60, 60)), chunks=(1, 4, 24, 24))
    out = superresolve_array(x, conv_kernel, patch=P, overlap=2 * HALO, n_outputs=2, crop=True, block_tiles=(2, 2))
    graph = dict(out.__dask_graph__())
    edges = [k for k in graph if k[0].startswith("opensr-edge-row-")]
    assert edges
    for key in edges:
        assert dask.get(graph, key).shape[-2] == S4 * HALO  # cut = s * O / 2
    blend = superresolve_array(x, conv_kernel, patch=P, overlap=2 * HALO, n_outputs=2, block_tiles=(2, 2))
    graph = dict(blend.__dask_graph__())
    key = next(k for k in graph if k[0].startswith("opensr-edge-row-"))
    assert dask.get(graph, key).shape[-2] == S4 * 2 * HALO


def test_crop_overlap_zero_is_the_blend():
    x = scene((4, 37, 29), seed=2)
    _, a = run(x, (4, 5, 7), overlap=0)
    _, b = run_crop(x, (4, 5, 7), kernel=standin, overlap=0)
    np.testing.assert_array_equal(a, b)
