"""The engine on a CUDA GPU (run wherever a GPU is available; skipped, with the reason, elsewhere).

What holds on a GPU, with ``torch.use_deterministic_algorithms(True)`` and cuDNN's benchmark mode
off: a patch's result does not depend on its batch mates or its position in a fixed-shape batch
(bit-identical; asserted below, with a 1e-6 fallback bound reported in the failure message), and a
rerun is bit-identical. GPU and CPU results agree to float rounding only.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xr_opensr import _kernel, _runtime
from xr_opensr.models import load_model
from xr_opensr.models.base import SampleOptions

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch sees none)"),
]


@pytest.fixture
def deterministic():
    torch.use_deterministic_algorithms(True, warn_only=False)
    torch.backends.cudnn.benchmark = False
    yield
    torch.use_deterministic_algorithms(False)


def lr_patches(n: int, size: int) -> np.ndarray:
    return np.random.default_rng(0).uniform(0.02, 0.3, (n, 4, size, size)).astype(np.float32)


@pytest.mark.parametrize("dtype", [None, "bfloat16"])
def test_batch_invariant_on_gpu(deterministic, dtype):
    net = load_model("default", device="cuda", dtype=dtype)
    p = lr_patches(5, net.config.patch_size)
    seeds = [1, 2, 3, 4, 5]
    kw = dict(samples=3, steps=2, batch_size=8, return_samples=True)  # the samples run the diffusion model
    full = net.sample_summary(p, seed=seeds, **kw)
    for order in ([1], [4, 3, 2, 1], [3, 1, 0]):
        part = net.sample_summary(p[order], seed=[seeds[i] for i in order], **kw)
        for k, i in enumerate(order):
            diff = float(np.nanmax(np.abs(part[k] - full[i])))
            assert np.array_equal(part[k], full[i], equal_nan=True), f"patch {i} at {k}: max |diff| {diff:.2e}"
    np.testing.assert_array_equal(net.sample_summary(p, seed=seeds, **kw), full)  # a rerun


def test_gpu_agrees_with_cpu_and_bf16_is_close():
    p = lr_patches(2, 32)
    kw = dict(samples=2, steps=2, seed=[1, 2], return_samples=True)
    cpu = load_model("default", device="cpu").sample_summary(p, **kw)
    gpu = load_model("default", device="cuda").sample_summary(p, **kw)
    b16 = load_model("default", device="cuda", dtype="bfloat16").sample_summary(p, **kw)
    assert np.abs(gpu[:, 0] - cpu[:, 0]).mean() < 1e-3
    assert np.abs(b16[:, 0] - gpu[:, 0]).mean() < 5e-3


def test_kernel_on_gpu_one_block_in_flight_and_batch_from_total_memory():
    spec = _runtime.ModelSpec(_runtime.ModelRef(model="default", device="cuda"), SampleOptions(samples=2, steps=2))
    net = _runtime.get_model(spec).diffusion  # model v2's diffusion part: its batch size
    limit = net.batch_limit(32, 32)
    assert limit == net.batch_limit(32, 32) and limit > 32  # a function of the device, not its load
    out = _kernel.run_patches(spec, lr_patches(3, 32), np.array([1, 2, 3], dtype=np.uint64))
    assert out.shape == (3, 2, 4, 128, 128) and np.isfinite(out).all()


def test_compiled_denoiser_matches():
    net = load_model("default", device="cuda")
    p = lr_patches(2, 32)
    ref = net.sample_summary(p, samples=2, steps=2, seed=[1, 2], batch_size=4, return_samples=True)
    out = net.compile_denoiser().sample_summary(p, samples=2, steps=2, seed=[1, 2], batch_size=4, return_samples=True)
    assert np.abs(out - ref).max() < 1e-3
