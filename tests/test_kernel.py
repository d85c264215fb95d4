"""The batched kernel: a patch's result does not depend on its batch mates, its position in the
batch or the number of patches; memory does not grow with ``samples``; baselines; CPU threads."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import xarray as xr
from conftest import make_cube

import xr_opensr
from xr_opensr import _kernel, _runtime, errors
from xr_opensr import metrics as M
from xr_opensr.models import load_model
from xr_opensr.models.base import SampleOptions
from xr_opensr.models.pipeline import MAX_SAMPLES


def _spec(cpu_threads: int = 1, **options) -> _runtime.ModelSpec:
    """The ModelSpec of the tiny model on the CPU run with ``options`` (:class:`SampleOptions`)."""
    return _runtime.ModelSpec(_runtime.ModelRef(model="tiny", device="cpu"), SampleOptions(**options),
                              cpu_threads=cpu_threads)


def lr_patches(n: int, size: int, seed: int = 0) -> np.ndarray:
    patches = np.random.default_rng(seed).uniform(0.02, 0.3, (n, 4, size, size)).astype(np.float32)
    patches[1, :, : size // 4, : size // 3] = np.nan  # some nodata in patch 1
    return patches


@pytest.mark.parametrize("model, batch, threads", [("tiny", 4, 1), ("default", 7, 1), ("default", None, 2)])
def test_patch_result_independent_of_batch_mates_and_position(model, batch, threads):
    """Patch 1 (with nodata) alone, first, last and in the middle of calls of different patches:
    bit-identical mean, std and samples (a fixed batch shape; the latents of several patches share
    a network call). With 2 threads the default batch size is a multiple of 2 (an odd batch split
    between two threads gives its middle item other rounding)."""
    net = load_model(model, device="cpu")
    p = lr_patches(5, net.config.patch_size)
    seeds = [11, 12, 13, 14, 15]
    kw = dict(samples=3, steps=2, batch_size=batch, return_samples=True)
    with _runtime.torch_threads(threads):
        full = net.sample_summary(p, seed=seeds, **kw)
        orders = [[1], [4, 3, 2, 1], [3, 1, 0]]
        for order in orders:
            part = net.sample_summary(p[order], seed=[seeds[i] for i in order], **kw)
            for k, i in enumerate(order):
                np.testing.assert_array_equal(part[k], full[i], err_msg=f"patch {i} at {k} of {order}")
    assert np.isnan(full[1, 0]).any() and np.isfinite(full[0]).all()


def test_summary_matches_samples_and_batch_size_only_changes_rounding():
    net = load_model("tiny", device="cpu")
    p = lr_patches(3, 16)
    out = net.sample(p, samples=4, steps=2, seed=[1, 2, 3], batch_size=5)
    summ = net.sample_summary(p, samples=4, steps=2, seed=[1, 2, 3], batch_size=5, return_samples=True)
    np.testing.assert_array_equal(summ[:, 2:], out)  # the same samples, bit for bit
    mean, std = net.summarize(out)
    np.testing.assert_allclose(summ[:, 0], mean, atol=1e-6)
    np.testing.assert_allclose(summ[:, 1], std, atol=1e-6)
    other = net.sample_summary(p, samples=4, steps=2, seed=[1, 2, 3], batch_size=3)
    # another batch shape: float rounding only (histogram matching can move a value to a neighbour quantile)
    diff = np.abs(other - summ[:, :2])[np.isfinite(other)]
    assert np.array_equal(np.isnan(other), np.isnan(summ[:, :2])) and diff.mean() < 1e-5 and diff.max() < 1e-3
    one = net.sample_summary(p, samples=1, steps=2, seed=[1, 2, 3])
    assert np.all(one[:, 1][np.isfinite(one[:, 0])] == 0) and np.isnan(one[1, 1]).any()


def test_run_patches_through_spec_is_chunk_free_and_counts():
    spec = _spec(samples=2, steps=2, batch_size=3)
    p = lr_patches(4, 16)
    seeds = np.arange(4, dtype=np.uint64) * 7
    _kernel.reset_kernel_stats()
    full = _kernel.run_patches(spec, p, seeds)
    assert _kernel.kernel_stats() == {"calls": 1, "patches": 4}
    parts = np.concatenate([_kernel.run_patches(spec, p[i : i + 1], seeds[i : i + 1]) for i in (0, 1, 2, 3)])
    np.testing.assert_array_equal(parts, full)
    assert _kernel.run_patches(spec, p[:0], seeds[:0]).shape == (0, 2, 4, 64, 64)
    with pytest.raises(ValueError, match="one seed per patch"):
        _kernel.run_patches(spec, p, seeds[:2])


def test_threads_are_a_per_run_setting_and_restored():
    before = torch.get_num_threads()
    spec = _spec(samples=2, steps=2, cpu_threads=2)
    out = _kernel.run_patches(spec, lr_patches(2, 16), np.array([1, 2], dtype=np.uint64))
    assert np.isfinite(out[0]).all() and torch.get_num_threads() == before
    cube = make_cube(16, 16)
    ds = cube.opensr.superresolve(2, model="tiny", steps=2, threads=2)
    assert ds.sr.shape[-2:] == (64, 64)
    with pytest.raises(errors.InputError, match="threads must be a positive integer"):
        cube.opensr.superresolve(2, model="tiny", threads=0)


def test_samples_have_an_upper_bound():
    cube = make_cube(16, 16)
    with pytest.raises(errors.InputError, match=f"samples must be in \\[0, {MAX_SAMPLES}\\]"):
        cube.opensr.superresolve(MAX_SAMPLES + 1, model="tiny")
    with pytest.raises(errors.InputError, match=f"samples must be a positive integer <= {MAX_SAMPLES}"):
        load_model("tiny", device="cpu").sample(lr_patches(2, 16), samples=MAX_SAMPLES + 1)


_RSS_SCRIPT = textwrap.dedent("""
    import json, resource, sys
    import numpy as np
    from xr_opensr import _kernel, _runtime
    from xr_opensr.models.base import SampleOptions
    ref = _runtime.ModelRef(model="tiny", device="cpu")
    patch = np.random.default_rng(0).uniform(0.02, 0.3, (1, 4, 16, 16)).astype(np.float32)
    _kernel.run_patches(_runtime.ModelSpec(ref, SampleOptions(samples=2, steps=1)), patch,
                        np.array([1], dtype=np.uint64))  # model loaded, torch warmed up
    result = {"base_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}
    for samples in sys.argv[1:]:  # the peak RSS after each run, in the order given
        spec = _runtime.ModelSpec(ref, SampleOptions(samples=int(samples), steps=1))
        out = _kernel.run_patches(spec, patch, np.array([1], dtype=np.uint64))
        assert out.shape == (1, 2, 4, 64, 64) and np.isfinite(out).all()
        result[samples] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps(result))
""")


def _peak_rss(*samples: int) -> dict:
    """Peak RSS (kB) of one process: ``base_kb`` once the model is loaded and warmed up, then after
    sampling one patch ``samples[0]`` times, ``samples[1]`` times... (keys ``str(samples)``)."""
    res = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, *map(str, samples)], capture_output=True, text=True,
                         timeout=600, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_memory_does_not_grow_with_samples():
    """Peak RSS of a process sampling one patch 2000 times is within 1.5x of 20 times (issue 11.5);
    the growth above the warmed-up process is also small in absolute terms (< 64 MB). One process
    (one torch import and model load): the peak after 20 samples, then after 2000."""
    rss = _peak_rss(20, 2000)
    small, large = rss["20"], rss["2000"]
    assert large <= 1.5 * small, rss
    assert large - rss["base_kb"] < 64 * 1024, rss


@pytest.mark.parametrize("name", ["bicubic", "bicubic+consistency"])
def test_baselines_through_the_same_pipeline(name):
    net = load_model(name)
    p = lr_patches(3, 32)
    out = net.sample_summary(p, samples=3, return_samples=True)
    assert out.shape == (3, 5, 4, 128, 128)
    valid = ~np.isnan(p).any(axis=1)
    ref = np.where(valid[1].repeat(4, 0).repeat(4, 1), M.bicubic_upsample(np.where(valid[1], p[1], np.nan), 4), np.nan)
    if name == "bicubic":
        np.testing.assert_array_equal(out[0, 0], M.bicubic_upsample(p[0], 4))
        np.testing.assert_array_equal(out[1, 0], ref)
    else:
        from xr_opensr.models.pipeline import consistency_step

        step = load_model("default", device="cpu").config.consistency
        expected = consistency_step(M.bicubic_upsample(p[:1], 4)[:, None], p[:1], 4, step)[0, 0]
        np.testing.assert_allclose(out[0, 0], expected, atol=1e-7)
    assert np.all(out[:, 1][np.isfinite(out[:, 0])] == 0)  # uncertainty 0
    assert np.isnan(out[1, 0]).any() and np.array_equal(np.isnan(out[1, 0]), np.isnan(ref))
    np.testing.assert_array_equal(out[:, 2], out[:, 0])
    info = net.info  # no config: declared directly
    assert not hasattr(net, "config") and info.sampling is None and info.mean_without_samples
    assert (info.bands, info.scale, info.patch, info.overlap) == (("B04", "B03", "B02", "B08"), 4, 32, 8)

    cube = make_cube(40, 36)
    ds = cube.opensr.superresolve(2, model=name)
    tiny = cube.opensr.superresolve(2, model="tiny", steps=1)
    assert ds.sizes == tiny.sizes and set(ds.data_vars) == set(tiny.data_vars)
    ds = ds.compute()
    assert ds.attrs["model"] == name and float(ds.uncertainty.max()) == 0.0
    xr.testing.assert_identical(ds, cube.chunk({"x": 12, "y": 12}).opensr.superresolve(2, model=name).compute())


def test_unknown_baseline_is_a_typed_error():
    from xr_opensr.models.baselines import BaselineModel

    with pytest.raises(errors.InputError, match="unknown baseline 'lanczos'"):
        BaselineModel("lanczos")


def test_bfloat16_on_the_cpu_is_close_to_float32():
    p = lr_patches(2, 16)
    f32 = load_model("tiny", device="cpu").sample_summary(p, samples=2, steps=2, seed=[1, 2])
    b16 = load_model("tiny", device="cpu", dtype="bfloat16")
    assert b16.dtype == torch.bfloat16
    low = b16.sample_summary(p, samples=2, steps=2, seed=[1, 2])
    ok = np.isfinite(f32[:, 0])
    assert np.array_equal(ok, np.isfinite(low[:, 0]))
    assert np.abs(low[:, 0] - f32[:, 0])[ok].mean() < 0.05 * np.abs(f32[:, 0][ok]).mean()
    assert xr_opensr.load_model("tiny", device="cpu").dtype == torch.float32


def test_model_is_prepared_once_at_load_before_threads_share_it():
    """A process-shared model is converted (channels_last) under the load lock, never by a sampling
    thread while another thread runs it (that swap freed storages in use: NaN and wrong values)."""
    from xr_opensr import _runtime

    _runtime.clear_cache()
    spec = _spec(samples=2, steps=2)
    assert getattr(_runtime.get_model(spec), "_inference_ready", False)


_FIRST_COMPUTE_THREADED = """
import hashlib, sys, warnings
warnings.simplefilter("ignore")
sys.path.insert(0, {tests!r})
from conftest import make_cube
import xr_opensr
cube = make_cube(24, 20)
threaded = cube.opensr.superresolve(2, model="tiny", steps=2).compute(scheduler="threads")
print(hashlib.md5(threaded.sr.values.tobytes()).hexdigest())
"""


def test_first_compute_of_a_process_on_threads_equals_sync():
    """In fresh processes whose first compute runs several blocks on threads at once (the race of
    a lazily prepared model): the same bits as the single-threaded scheduler, every time."""
    import hashlib
    import subprocess
    import sys
    from pathlib import Path

    from conftest import make_cube

    ref = make_cube(24, 20).opensr.superresolve(2, model="tiny", steps=2).compute(scheduler="sync")
    want = hashlib.md5(ref.sr.values.tobytes()).hexdigest()
    code = _FIRST_COMPUTE_THREADED.format(tests=str(Path(__file__).parent))
    # three fresh processes, started together (each one's first compute is its own)
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(3)]
    try:
        results = [proc.communicate(timeout=300) for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    for proc, (out, err) in zip(procs, results, strict=True):
        assert proc.returncode == 0, err[-2000:]
        assert out.strip() == want
