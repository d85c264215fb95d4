"""``look_shift``: each look's sub-pixel offset from the date asked for (issue 21), in the output of
``superresolve(..., looks=K)``.

Real data (eo-learn's L1C stack, ``tests/multidate_data.py``): the looks are a real date shifted by known
sub-pixel amounts (``shift_image``, Lanczos-4, as in ``tests/test_registration.py``), so the offsets are
known; the real dates are used as they are for the antisymmetry and the cloudy-look checks. Only
``look_shift`` is computed (not the model), so the tests are fast.
"""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from conftest import raise_if_dask_computes
from multidate_data import eolearn_stack

import xr_opensr  # noqa: F401  (registers .opensr)
from xr_opensr import superresolve
from xr_opensr.registration import shift_image

#: known content shifts (dy, dx) in LR pixels of dates 1 and 2 relative to date 0
KNOWN = ((0.0, 0.0), (0.3, -0.45), (-0.7, 0.2))


def _on_10m(stack: xr.DataArray) -> xr.DataArray:
    """eo-learn's 9.995 x 9.997 m pixels labelled 10 m (as tests/test_multidate.py does)."""
    x0, y0 = float(stack.x[0]) - 5.0, float(stack.y[0]) + 5.0
    stack = stack.assign_coords(x=x0 + 10.0 * (np.arange(stack.sizes["x"]) + 0.5),
                                y=y0 - 10.0 * (np.arange(stack.sizes["y"]) + 0.5))
    return stack.rio.write_transform(stack.rio.transform(recalc=True))


@pytest.fixture(scope="module")
def real() -> xr.DataArray:
    """The 5 real dates (two fully cloudy), 64 x 64 px."""
    return _on_10m(eolearn_stack().isel(y=slice(18, 82), x=slice(18, 82)))


@pytest.fixture(scope="module")
def shifted(real) -> xr.DataArray:
    """3 dates, 10 days apart: a clear real date, and the same date moved by KNOWN[1] and KNOWN[2]."""
    clear = real.isel(time=[0, 3, 4])
    base = clear.values[0].astype(np.float64)
    values = np.stack([shift_image(base, s, order="lanczos4") if any(s) else base for s in KNOWN]).astype(np.float32)
    return clear.copy(data=values).assign_coords(time=np.datetime64("2015-08-30T10:05:47", "ns")
                                                 + np.array([0, 10, 20], "timedelta64[D]"))


def expected_shifts() -> np.ndarray:
    """(3, 3, 2): the shift of look j of date t (looks: the date, then the others nearest first, earlier first)."""
    order = [[0, 1, 2], [1, 0, 2], [2, 1, 0]]
    known = np.asarray(KNOWN)
    return np.stack([[known[j] - known[row[0]] for j in row] for row in order])


def _shift(cube: xr.DataArray, **kw) -> xr.DataArray:
    kw = {"looks": 2, "window": "30D", **kw}
    return superresolve(cube, 0, **kw).look_shift


def test_look_shift_recovers_a_known_subpixel_shift_of_a_real_date(shifted):
    res = _shift(shifted.chunk({"time": 1}))
    assert res.dims == ("time", "look", "shift") and res.dtype == np.float32
    assert res["shift"].values.tolist() == ["y", "x"] and res.sizes["look"] == 3
    np.testing.assert_array_equal(res.look_time.values[:, 0], shifted.time.values)
    got = res.values
    np.testing.assert_array_equal(got[:, 0], 0.0)  # the date itself
    np.testing.assert_allclose(got, expected_shifts(), rtol=0, atol=0.05)
    assert np.abs(got - expected_shifts()).max() < 0.01  # measured: <= 0.002 px
    assert res.attrs["units"] == "LR pixels" and "estimate_shift" in res.attrs["method"]
    assert "date(y - dy, x - dx)" in res.attrs["sign_convention"]


def test_look_shift_sign_is_that_of_estimate_shift(shifted):
    """The look of date 0 that is date 1 (content moved by +KNOWN[1]): look_shift equals
    estimate_shift(ref=date 0, mov=date 1), and shift_image(look, -shift) brings it back onto the date."""
    from xr_opensr.looks import LOOK_SHIFT_TOL
    from xr_opensr.registration import estimate_shift

    got = _shift(shifted).values[0, 1].astype(np.float64)
    ref, mov = (shifted.values[i].astype(np.float64) for i in (0, 1))
    np.testing.assert_allclose(got, estimate_shift(ref, mov, tol=LOOK_SHIFT_TOL), atol=1e-5)
    np.testing.assert_allclose(got, estimate_shift(ref, mov), atol=2e-3)  # the default stopping step
    assert np.all(np.sign(got) == np.sign(KNOWN[1]))
    inner = (slice(None), slice(8, -8), slice(8, -8))
    back, wrong = (shift_image(mov, sign * got, order="lanczos4") for sign in (-1, 1))
    rms = [float(np.sqrt(np.mean((a[inner] - ref[inner]) ** 2))) for a in (back, mov, wrong)]
    assert rms[0] < 0.3 * rms[1] and rms[0] < 0.2 * rms[2], rms  # measured: 0.0023, 0.0089, 0.016


def test_look_shift_is_lazy_one_task_per_date(shifted, monkeypatch):
    from xr_opensr import looks

    seen = []
    block_shifts = looks._block_shifts

    def spy(block, **kw):
        seen.append(block.shape)
        return block_shifts(block, **kw)

    monkeypatch.setattr(looks, "_block_shifts", spy)
    with raise_if_dask_computes():
        ds = superresolve(shifted.chunk({"time": 3}), 0, looks=2)
        lazy = ds.look_shift
    assert lazy.chunks is not None and not seen
    # chunked along time as sr (the Dataset's chunks stay consistent: Zarr, ds.chunksizes)
    assert ds.chunksizes["time"] == ds.sr.chunksizes["time"] == (3,)
    lazy.compute(scheduler="sync")
    # one date's window and its looks per task, never the series
    assert sorted(seen) == [(1, 3, 4, 64, 64)] * 3


def test_look_shift_is_chunk_invariant(shifted):
    ref = _shift(shifted.chunk({"time": 1})).values
    for chunks in ({"time": 2, "y": 20, "x": 30}, {"time": -1, "y": 33}):
        np.testing.assert_array_equal(_shift(shifted.chunk(chunks)).values, ref, err_msg=str(chunks))
    np.testing.assert_array_equal(_shift(shifted).values, ref)  # numpy-backed input


def test_look_shift_nan_where_the_look_is_missing_or_unregistrable(real):
    # 5 real dates: 2015-07-11 (clear), 07-31 and 08-20 (fully cloudy), 08-30 and 09-09 (clear)
    res = _shift(real.chunk({"time": 1}), looks=2, window="21D")
    table_time = res.look_time.values
    got = res.values
    missing = np.isnat(table_time)
    assert missing.any()  # 07-11 has one date within 21 days, 09-09 two
    assert np.isnan(got[missing]).all()
    np.testing.assert_array_equal(got[:, 0], 0.0)
    # a clear date against a fully cloudy one: not registered
    clear = [np.datetime64(d, "ns") for d in ("2015-07-11T10:00:08", "2015-08-30T10:05:47", "2015-09-09T10:00:17")]
    for t, row in enumerate(table_time):
        for j in range(1, len(row)):
            if np.isnat(row[j]):
                continue
            both_clear = res.time.values[t] in clear and row[j] in clear
            if both_clear:  # two real clear dates: registered (a real offset, well below a pixel)
                assert np.isfinite(got[t, j]).all() and np.abs(got[t, j]).max() < 1.0
            elif res.time.values[t] in clear:
                assert np.isnan(got[t, j]).all(), (t, j)
    # a date that is all nodata: every look NaN, and that date NaN as a look of the others
    blank = real.isel(time=[0, 3, 4]).copy()
    blank[1] = np.nan
    out = _shift(blank.chunk({"time": 1}), looks=2, window="60D").values
    assert np.isnan(out[1]).all()
    lt = _shift(blank, looks=2, window="60D").look_time.values
    assert np.isnan(out[np.broadcast_to(lt == blank.time.values[1], lt.shape)]).all()


def test_real_dates_offsets_are_antisymmetric(real):
    clear = real.isel(time=[0, 3, 4])
    res = _shift(clear.chunk({"time": 1}), looks=2, window="90D")
    times, lt, got = res.time.values, res.look_time.values, res.values.astype(np.float64)
    pairs = 0
    for a in range(3):
        for j in range(1, 3):
            b = int(np.nonzero(times == lt[a, j])[0][0])
            k = int(np.nonzero(lt[b] == times[a])[0][0])
            np.testing.assert_allclose(got[a, j] + got[b, k], 0.0, atol=0.05)
            pairs += 1
    assert pairs == 6


def test_look_shift_through_zarr_and_the_cli(shifted, tmp_path):
    from xr_opensr import cli

    direct = superresolve(shifted.chunk({"time": 1}), 0, looks=2)
    meta = direct.drop_vars(list(direct.data_vars))  # the coordinates only: no model run here
    meta.to_zarr(tmp_path / "direct.zarr")
    back = xr.open_zarr(tmp_path / "direct.zarr", decode_coords="all").compute()
    want = meta.compute()
    xr.testing.assert_identical(back.look_shift, want.look_shift)
    assert back.look_shift.attrs == want.look_shift.attrs and back["shift"].values.tolist() == ["y", "x"]
    assert np.isfinite(want.look_shift.values).all()
    # the CLI's Zarr output carries it (a coordinate, like look_time)
    src, out = tmp_path / "series.zarr", tmp_path / "sr.zarr"
    small = shifted.isel(y=slice(16, 48), x=slice(16, 48))  # 32 x 32 px: a quick model run
    small.to_dataset(name="reflectance").to_zarr(src, zarr_format=2)
    assert cli.main(["superresolve", str(src), str(out), "--looks", "2", "--samples", "0"]) == 0
    written = xr.open_zarr(out, decode_coords="all")
    assert "look_shift" in written.coords and "look_time" in written.coords
    np.testing.assert_array_equal(written.look_shift.values, _shift(small).values)
    assert written.look_shift.attrs["units"] == "LR pixels"
