"""Golden outputs of every shipped model: the model-interface redesign (issue 20) must keep them bit for bit.

``python tests/test_golden.py --write`` computes the cases below and records, per output array, its
SHA-256 (the bits) and summary statistics in ``tests/data/golden/outputs.json``, with the CPU capability
and torch version that computed them. The test recomputes every case and compares:

* on a machine like the recording one (same torch version and CPU capability, e.g. ``AVX2``): the
  SHA-256 of every array (bit for bit);
* elsewhere (other CPU instruction sets choose other convolution kernels, whose float rounding differs,
  so bit identity across CPUs is not promised): the statistics, to 1e-4 relative.

The cases are small real-looking cubes (``xr_opensr.testing.s2_cube``, seeded) with several patches, so
that patch overlaps, blending, seeds and chunking all enter.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest

GOLDEN = Path(__file__).parent / "data" / "golden" / "outputs.json"


def _cube(bands: str = "four", chunks: dict | None = None):
    from xr_opensr.sentinel2 import GUIDED_BANDS, MODEL_BANDS
    from xr_opensr.testing import s2_cube

    names = (*MODEL_BANDS, *GUIDED_BANDS) if bands == "ten" else MODEL_BANDS
    cube = s2_cube(40, 36, times=2, seed=7, dtype="uint16", bands=names)
    return cube.chunk(chunks) if chunks else cube


#: name -> (cube kind, superresolve keywords, chunks)
CASES = {
    "default-s0": ("four", dict(samples=0), None),
    "default-s1": ("four", dict(samples=1), None),
    "default-s10": ("four", dict(samples=10), {"x": 24, "y": 24}),
    "default-s3-samples": ("four", dict(samples=3, return_samples=True), None),
    "default-s10-uint16": ("four", dict(samples=10, output_dtype="uint16"), None),
    "bicubic": ("four", dict(samples=1, model="bicubic"), None),
    "bicubic+consistency": ("four", dict(samples=1, model="bicubic+consistency"), None),
    "s2-20m-s10": ("ten", dict(samples=10, bands="all"), {"x": 24, "y": 24}),
    "s2-20m-s0": ("ten", dict(samples=0, bands="all"), None),
    "tiny-s2-samples": ("four", dict(samples=2, model="tiny", steps=2, return_samples=True), None),
    "default-s10-crop": ("four", dict(samples=10, tiling="crop"), {"x": 24, "y": 24}),
}


def compute(name: str) -> dict[str, np.ndarray]:
    import xr_opensr  # noqa: F401

    kind, kwargs, chunks = CASES[name]
    res = _cube(kind, chunks).opensr.superresolve(**kwargs, threads=1).compute()
    return {var: np.ascontiguousarray(res[var].values) for var in res.data_vars}


def _stats(a: np.ndarray) -> dict:
    a64 = a.astype(np.float64)
    finite = np.isfinite(a64)
    vals = a64[finite]
    return {"dtype": str(a.dtype), "shape": list(a.shape), "finite": int(finite.sum()),
            "mean": float(vals.mean()) if vals.size else None, "std": float(vals.std()) if vals.size else None,
            "min": float(vals.min()) if vals.size else None, "max": float(vals.max()) if vals.size else None}


def _record(arrays: dict[str, np.ndarray]) -> dict:
    return {var: {"sha256": hashlib.sha256(a.tobytes()).hexdigest(), **_stats(a)} for var, a in arrays.items()}


def _machine() -> dict:
    import torch

    return {"torch": torch.__version__.split("+")[0], "cpu_capability": torch.backends.cpu.get_cpu_capability()}


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden_outputs_are_unchanged(name):
    if not GOLDEN.exists():
        pytest.fail(f"{GOLDEN} is missing: record it with `python tests/test_golden.py --write`")
    golden = json.loads(GOLDEN.read_text())
    want = golden["cases"][name]
    got = _record(compute(name))
    assert sorted(got) == sorted(want)
    if golden["machine"] == _machine():
        changed = [var for var in got if got[var]["sha256"] != want[var]["sha256"]]
        assert not changed, f"{name}: {changed} differ bit-wise from the golden output: {got} vs {want}"
        return
    for var in got:  # another CPU/torch: the statistics
        g, w = got[var], want[var]
        assert (g["dtype"], g["shape"], g["finite"]) == (w["dtype"], w["shape"], w["finite"])
        for key in ("mean", "std", "min", "max"):
            assert g[key] == pytest.approx(w[key], rel=1e-4, abs=1e-6), (name, var, key)


def main() -> None:
    if "--write" not in sys.argv:
        raise SystemExit("usage: python tests/test_golden.py --write   (records the golden outputs)")
    cases = {name: _record(compute(name)) for name in sorted(CASES)}
    GOLDEN.parent.mkdir(parents=True, exist_ok=True)
    GOLDEN.write_text(json.dumps({"machine": _machine(), "cases": cases}, indent=1, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN}: {len(cases)} cases")


if __name__ == "__main__":
    main()
