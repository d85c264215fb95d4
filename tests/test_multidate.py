"""Multi-date super-resolution (issue 21): ``superresolve(cube, samples, looks=K, window=...)``.

Properties, not values (the multi-date model's parameters are fitted elsewhere): the call is lazy, the
output has the single-date layout plus ``looks``/``changed``/``look_time``, it is chunk- and
scheduler-invariant bit for bit, one valid look gives the single-date result exactly, several shifted
looks of a static scene get closer to the truth than one, a changed look is left out (and counted), the
reference date's nodata stays nodata, the CLI and Zarr give the Python result, and a real L1C time series
(eo-learn) runs end to end.

The looks are simulated here from a synthetic 2.5 m scene: each look shifted by a known sub-pixel amount
(cubic), degraded by the sensor model (:func:`xr_opensr.sensor.degrade`), with a little noise.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from conftest import make_cube, raise_if_dask_computes

import xr_opensr  # noqa: F401  (registers .opensr)
from xr_opensr import superresolve
from xr_opensr.errors import InputError

#: sub-pixel shifts (dy, dx) in LR pixels of the looks; look 0 (the date asked for) is the reference
SHIFTS = ((0.0, 0.0), (0.5, 0.25), (-0.25, 0.5), (0.25, -0.5), (-0.5, -0.25))
LR = (56, 56)  # exactly 2 x 2 patches of the multi-date model (patch 32, stride 24): none padded
#: a bright object (reflectance per band), e.g. a roof or a vehicle
OBJECT = np.array([0.35, 0.33, 0.3, 0.4])


def simulate(hr: np.ndarray, shifts=SHIFTS, *, seed: int = 0, objects=()) -> np.ndarray:
    """(K, 4, h, w) float32 LR looks of ``hr`` (4, 4h, 4w); ``objects``: ((y0, y1, x0, x1) in HR pixels,
    looks that show :data:`OBJECT` there)."""
    from scipy import ndimage

    from xr_opensr.sensor import degrade

    rng = np.random.default_rng(seed)
    out = []
    for j, (dy, dx) in enumerate(shifts):
        img = hr.astype(np.float64).copy()
        for (y0, y1, x0, x1), on in objects:
            if j in on:
                img[:, y0:y1, x0:x1] = OBJECT[:, None, None]
        if j:
            img = np.stack([ndimage.shift(b, (4 * dy, 4 * dx), order=3, mode="nearest") for b in img])
        lr = degrade(img, 4)
        out.append((lr + rng.normal(0, 0.001, lr.shape)).astype(np.float32))
    return np.stack(out)


def as_cube(looks: np.ndarray, days: int = 1) -> xr.DataArray:
    """Looks (K, 4, h, w) as a (time, band, y, x) float32 cube, a date every ``days``, look 0 first."""
    k, _, h, w = looks.shape
    cube = xr.DataArray(looks, dims=("time", "band", "y", "x"), name="reflectance", coords={
        "time": pd.date_range("2024-06-01", periods=k, freq=f"{days}D"), "band": ["B04", "B03", "B02", "B08"],
        "y": 5_000_000.0 - 10.0 * (np.arange(h) + 0.5), "x": 500_000.0 + 10.0 * (np.arange(w) + 0.5)})
    return cube.rio.write_crs("EPSG:32633")


def scene(seed: int, lr: tuple[int, int] = LR) -> np.ndarray:
    from xr_opensr.testing import synthetic_scene

    return np.asarray(synthetic_scene((4 * lr[0], 4 * lr[1]), seed=seed), dtype=np.float32)[:4]


def single_date(cube: xr.DataArray, t: int, samples: int = 2) -> xr.Dataset:
    """The single-date default result of date ``t`` alone (no time dim)."""
    return superresolve(cube.isel(time=[t]), samples).isel(time=0).compute()


@pytest.fixture(scope="module")
def truth() -> np.ndarray:
    return scene(7)


@pytest.fixture(scope="module")
def static(truth) -> xr.DataArray:
    """A static textured scene seen on 5 consecutive days with sub-pixel shifts."""
    return as_cube(simulate(truth))


@pytest.fixture(scope="module")
def static_sr(static) -> xr.Dataset:
    """The multi-date result of every date of :func:`static` (up to 5 looks: every date), chunked by date and
    in space."""
    return superresolve(static.chunk({"time": 1, "y": 16, "x": 16}), 2, looks=5).compute()


# --------------------------------------------------------------------------- laziness, layout, invariance


def test_lazy_and_the_output_layout(static, static_sr):
    with raise_if_dask_computes():
        res = static.chunk({"time": 1}).opensr.superresolve(2, looks=5, window="3D")
    assert set(res.data_vars) == {"sr", "uncertainty", "looks", "changed"}
    assert res.sr.dims == res.uncertainty.dims == ("time", "band", "y", "x")
    assert res.looks.dims == res.changed.dims == ("time", "y", "x")
    assert res.sr.dtype == res.uncertainty.dtype == np.float32
    assert res.looks.dtype == res.changed.dtype == np.uint8
    assert res.sr.shape == (5, 4, 4 * LR[0], 4 * LR[1])
    np.testing.assert_array_equal(res.time.values, static.time.values)
    assert list(res.band.values) == ["B04", "B03", "B02", "B08"]
    assert res.look_time.dims == ("time", "look") and res.sizes["look"] == 5
    np.testing.assert_array_equal(res.look_time.values[:, 0], static.time.values)
    assert res.attrs["model"] == "xr-opensr-multidate" and res.attrs["looks"] == 5
    assert pd.Timedelta(res.attrs["window"]) == pd.Timedelta("3D")
    assert res.attrs["base_model"] == "xr-opensr-default" and "registration" in res.attrs
    # georeference: the 2.5 m grid of the single-date result
    single = superresolve(static.isel(time=[0]), 2)
    xr.testing.assert_identical(res.x, single.x)
    xr.testing.assert_identical(res.y, single.y)
    assert res.rio.crs == single.rio.crs and res.rio.transform() == single.rio.transform()
    assert res.rio.resolution() == (2.5, -2.5)
    # date 2 has the same looks with the default window (30D): the same result
    xr.testing.assert_equal(res.isel(time=2).compute(), static_sr.isel(time=2))


#: the looks of 5 daily dates with window="3D" and looks=4: each date first, then the others within 3 days,
#: nearest first, the earlier first on a tie (-1: none)
TABLE_3D = [[0, 1, 2, 3, -1],  # 2024-06-05 is 4 days from 2024-06-01: outside "3D"
            [1, 0, 2, 3, 4],
            [2, 1, 3, 0, 4],
            [3, 2, 4, 1, 0],
            [4, 3, 2, 1, -1]]


def _look_times(cube: xr.DataArray) -> np.ndarray:
    with raise_if_dask_computes():
        res = superresolve(cube.chunk({"time": 1}), 2, looks=4, window="3D")
    return res.look_time.values.astype("datetime64[ns]")


def _expected(cube: xr.DataArray) -> np.ndarray:
    day = cube.time.values.astype("datetime64[ns]")
    return np.array([[day[i] if i >= 0 else np.datetime64("NaT", "ns") for i in row] for row in TABLE_3D])


def test_the_window_bounds_the_looks_ns_times(static):
    cube = static.assign_coords(time=static.time.values.astype("datetime64[ns]"))
    assert cube.time.dtype == "datetime64[ns]"
    np.testing.assert_array_equal(_look_times(cube), _expected(cube))


@pytest.mark.parametrize("unit", ["us", "s"])
def test_the_window_bounds_the_looks_other_time_units(static, unit):
    cube = static.assign_coords(time=static.time.values.astype(f"datetime64[{unit}]"))
    assert cube.time.dtype == f"datetime64[{unit}]"
    np.testing.assert_array_equal(_look_times(cube), _expected(cube))


def test_chunk_and_scheduler_invariant(static, static_sr):
    # another chunking along time, y and x, the synchronous scheduler
    again = superresolve(static.chunk({"time": 3, "y": 40, "x": 20}), 2, looks=5).compute(scheduler="sync")
    xr.testing.assert_identical(again, static_sr)
    # numpy-backed input, the threaded scheduler, a date at a time
    one = superresolve(static, 2, looks=5).isel(time=[3]).compute(scheduler="threads")
    xr.testing.assert_identical(one, static_sr.isel(time=[3]))


def test_distributed_in_process_cluster(static, static_sr):
    distributed = pytest.importorskip("distributed")
    import logging

    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None,
                                  silence_logs=logging.ERROR) as cluster, distributed.Client(cluster) as client:
        lazy = superresolve(static.chunk({"time": 2, "y": 24}), 2, looks=5).isel(time=[4])
        res = client.compute(lazy).result(timeout=300)
    xr.testing.assert_identical(res, static_sr.isel(time=[4]))


# --------------------------------------------------------------------------- one look = single-date


def _assert_single_date(res: xr.Dataset, ref: xr.Dataset, disagree: bool = False):
    np.testing.assert_allclose(res.sr.values, ref.sr.values, rtol=0, atol=1e-6)
    np.testing.assert_allclose(res.uncertainty.values, ref.uncertainty.values, rtol=0, atol=1e-6)
    valid = np.isfinite(ref.sr.values).all(axis=0)
    np.testing.assert_array_equal(res.looks.values, valid.astype(np.uint8))
    if disagree:  # the other looks were there and left out: the flag says so
        assert (res.changed.values[valid] > 0).mean() > 0.5
    else:
        assert (res.changed.values == 0).all()


@pytest.fixture(scope="module")
def small() -> xr.DataArray:
    """3 dates 5 days apart (make_cube: the same landscape, a small gain change per date)."""
    return make_cube(28, 28, times=3, dtype="float32")


def _holed(cube: xr.DataArray) -> xr.DataArray:
    """``cube`` with one corner of date 0 nodata."""
    cube = cube.copy()
    cube[0, :, :5, :7] = np.nan
    return cube


def test_one_look_is_the_single_date_result(small):
    holed = _holed(small)
    ref = single_date(holed, 0)
    assert np.isnan(ref.sr.values).any()  # the corner: looks 0 there
    # a single date
    _assert_single_date(superresolve(holed.isel(time=[0]), 2, looks=3).isel(time=0).compute(), ref)
    # every other date all NaN
    blank = holed.where(holed.time == holed.time[0])
    _assert_single_date(superresolve(blank.chunk({"time": 1}), 2, looks=3).isel(time=0).compute(), ref)
    # no other date within the window (5 days apart; ns times: see the window tests)
    holed = holed.assign_coords(time=holed.time.values.astype("datetime64[ns]"))
    res = superresolve(holed.chunk({"time": 1}), 2, looks=3, window="2D").compute()
    assert res.sizes["look"] == 1
    for t in range(3):
        _assert_single_date(res.isel(time=t), ref if t == 0 else single_date(holed, t))


def test_a_date_all_nodata_stays_nodata_where_another_date_is_valid(small):
    blank = small.where(small.time == small.time[0])  # dates 1 and 2 all NaN, date 0 valid
    res = superresolve(blank.chunk({"time": 1}), 2, looks=3).isel(time=[1, 2]).compute()
    assert np.isnan(res.sr.values).all() and np.isnan(res.uncertainty.values).all()
    assert (res.looks.values == 0).all() and (res.changed.values == 0).all()


def test_a_completely_different_scene_on_the_other_dates_is_left_out(truth, static):
    looks = simulate(scene(11))
    looks[0] = static.values[0]  # the reference: the static scene; the other dates: another landscape
    cube = as_cube(looks)
    res = superresolve(cube.chunk({"time": 1}), 2, looks=5).isel(time=0).compute()
    _assert_single_date(res, single_date(cube, 0), disagree=True)


# --------------------------------------------------------------------------- several looks


def psnr(img: np.ndarray, truth: np.ndarray, border: int = 8) -> float:
    crop = (slice(None), slice(border, -border), slice(border, -border))
    err = (img[crop].astype(np.float64) - truth[crop]) ** 2
    return float(10 * np.log10(1.0 / err.mean()))


def test_shifted_looks_of_a_static_scene_get_closer_to_the_truth(truth, static, static_sr):
    md = static_sr.isel(time=0)
    sd = single_date(static, 0)
    assert (md.looks.values >= 2).mean() > 0.8 and md.looks.values.max() == 5 and md.looks.values.min() >= 1
    assert (md.changed.values <= 4).all()
    assert np.abs(md.sr.values - sd.sr.values).max() > 1e-3
    gain = psnr(md.sr.values, truth) - psnr(sd.sr.values, truth)
    # measured: +0.078 dB here (mu=0.1); on a 40 x 36 crop with 4 looks +0.07 (mu=0.1), +0.03 (mu=0.3), +0.29 (mu=0.01); a
    # change of the single-date result that is not information from the looks would lower it
    assert gain > 0.015, f"PSNR gain over single-date {gain:+.3f} dB"
    assert np.isfinite(md.uncertainty.values).all() and (md.uncertainty.values >= 0).all()


def test_at_most_looks_per_pixel(static, static_sr):
    res = superresolve(static.chunk({"time": 1}), 2, looks=2).isel(time=0).compute()
    assert res.looks.values.max() == 2 and (res.looks.values >= 1).all()
    assert (res.looks.values <= static_sr.looks.values[0]).all()


@pytest.mark.parametrize("lr", [LR, (40, 36)],
                         ids=["56x56-no-padding", "40x36-padded"])
def test_registration_finds_the_shifts_in_every_patch(monkeypatch, lr):
    from xr_opensr.models import multidate

    found = []

    def spy(*args, **kwargs):
        out = fuse(*args, **kwargs)
        found.append(out[4])
        return out

    fuse = multidate.fuse_looks
    monkeypatch.setattr(multidate, "fuse_looks", spy)
    cube = as_cube(simulate(scene(7, lr)))
    superresolve(cube.chunk({"time": 1}), 0, looks=5).isel(time=0).compute(scheduler="sync")
    assert len(found) == 4  # 2 x 2 patches
    registered = 0
    for patch in found:
        assert patch[0] == (0.0, 0.0)
        for shift, truth in zip(patch[1:], SHIFTS[1:]):  # a look is registered right or left out, never wrong
            if shift is not None:  # (too few real pixels in a patch mostly past the image edge: left out)
                np.testing.assert_allclose(shift, truth, atol=0.05)
        registered += all(shift is not None for shift in patch[1:])
    assert registered >= (4 if lr == LR else 2)


def test_the_scene_level_shifts_are_used_and_patches_register_only_where_they_are_unknown(monkeypatch, static):
    """The model takes each look's ``look_shift`` (one estimate per date on the whole image's central window):
    no look is registered per patch where it is known; where it is NaN, per patch, as before."""
    from xr_opensr.models import multidate

    calls = []
    register = multidate._register

    def spy(*args):
        calls.append(1)
        return register(*args)

    monkeypatch.setattr(multidate, "_register", spy)
    res = superresolve(static.chunk({"time": 1}), 0, looks=5).isel(time=0).compute(scheduler="sync")
    assert not calls and np.isfinite(res.look_shift.values).all() and (res.looks.values == 5).mean() > 0.8
    ref = static.values[0][:, :32, :32].astype(np.float32)
    looks, x0 = static.values[:, :, :32, :32], np.repeat(np.repeat(ref, 4, axis=-2), 4, axis=-1)
    known = np.asarray(res.look_shift.values, dtype=np.float64)
    unknown = known.copy()
    unknown[2] = np.nan
    out = multidate.fuse_looks(looks, x0, multidate.MultiDateConfig(), max_looks=5, scene_shifts=known)
    assert not calls and out[4][1:] == [tuple(map(float, s)) for s in known[1:]]
    out = multidate.fuse_looks(looks, x0, multidate.MultiDateConfig(), max_looks=5, scene_shifts=unknown)
    assert len(calls) == 1 and out[4][2] is not None and np.allclose(out[4][2], known[2], atol=0.05)


def test_a_cloud_look_with_a_known_shift_is_left_out_and_counted(static):
    """A look whose scene-level shift is known but which shows something else on a textured patch (a uniform
    unmasked cloud, another scene) is left out there and counted in ``changed``, even as the only other look
    (no other candidate to judge it against)."""
    from xr_opensr.models import multidate

    ref = static.values[0][:, :32, :32].astype(np.float64)
    x0 = np.repeat(np.repeat(ref, 4, axis=-2), 4, axis=-1)
    other = simulate(scene(11))[1][:, :32, :32]
    for look in (np.full_like(ref, 0.6), other):
        looks = np.stack([ref, look]).astype(np.float32)
        out = multidate.fuse_looks(looks, x0, multidate.MultiDateConfig(), max_looks=2,
                                   scene_shifts=np.array([[0.0, 0.0], [0.2, 0.1]]))
        assert (out[1] == 1).all() and (out[2] == 1).all() and out[4][1] is None
        np.testing.assert_array_equal(out[0], x0)


def test_jacobi_with_no_prior_leaves_unconstrained_pixels_finite(static):
    """Preconditioned CG with no prior weight (mu = 0): pixels no look constrains (reference nodata) do not
    turn the patch into NaN."""
    from xr_opensr.models import multidate

    looks = static.values[:4, :, :32, :32].astype(np.float32).copy()
    looks[0, :, :, 24:] = np.nan
    x0 = np.repeat(np.repeat(np.nan_to_num(looks[0].astype(np.float64)), 4, axis=-2), 4, axis=-1)
    cfg = multidate.MultiDateConfig(mu=0.0, prior_weight=0.0, iterations=8, preconditioner="jacobi")
    mean = multidate.fuse_looks(looks, x0, cfg, max_looks=4, scene_shifts=np.array(SHIFTS[:4], dtype=float))[0]
    assert np.isfinite(mean).all()


def test_where_the_date_alone_was_used_the_single_date_result(static, static_sr):
    md = static_sr.isel(time=0)
    sd = single_date(static, 0)
    alone = md.looks.values == 1
    # a static scene seen 5 times: hardly a pixel is left to the date alone (the change test's scale includes the
    # single-date std; the date-alone case itself is checked where every other look changed, below)
    assert alone.mean() < 0.01
    np.testing.assert_allclose(md.sr.values[:, alone], sd.sr.values[:, alone], rtol=0, atol=1e-6)
    np.testing.assert_allclose(md.uncertainty.values[:, alone], sd.uncertainty.values[:, alone], rtol=0, atol=1e-6)


# objects of 3 x 3 LR pixels (a 6 x 6 object makes the looks that show it fail registration in the patches
# that cover it: they are then left out there, but not counted as changed)
SOME = (64, 76, 56, 68)  # on looks 1 and 2 of 4 others
ALL = (116, 128, 96, 108)  # on every other look


@pytest.fixture(scope="module")
def changed(truth):
    cube = as_cube(simulate(truth, objects=((SOME, (1, 2)), (ALL, (1, 2, 3, 4)))))
    res = superresolve(cube.chunk({"time": 1}), 2, looks=5).isel(time=0).compute()
    return res, single_date(cube, 0)


def test_a_change_on_some_looks_is_left_out_and_counted(changed, static_sr):
    res, sd = changed
    static = static_sr.isel(time=0)
    y0, y1, x0, x1 = SOME
    box = (slice(y0, y1), slice(x0, x1))
    assert (res.changed.values[box] >= 2).all() and (res.changed.values[box] > static.changed.values[box]).all()
    assert (res.looks.values[box] <= 3).all() and (res.looks.values[box] < static.looks.values[box]).all()
    # the object (~0.2 brighter than the scene there) does not leak into the date asked for: no brightening
    # (the other looks still sharpen it: up to a few hundredths from the single-date result)
    diff = res.sr.values[(slice(None), *box)] - sd.sr.values[(slice(None), *box)]
    assert abs(diff.mean()) < 0.005 and np.abs(diff).max() < 0.05


def test_a_change_on_every_other_look_gives_about_the_single_date_result(changed):
    res, sd = changed
    y0, y1, x0, x1 = ALL
    box = (slice(y0 + 4, y1 - 4), slice(x0 + 4, x1 - 4))  # the centre LR pixel of the object
    assert (res.changed.values[box] >= 3).all() and (res.looks.values[box] == 1).all()
    assert np.abs(res.sr.values[(slice(None), *box)] - sd.sr.values[(slice(None), *box)]).max() < 0.01


def test_a_change_on_every_other_look_gives_the_single_date_result(changed):
    res, sd = changed
    y0, y1, x0, x1 = ALL
    every = (res.changed.values >= 3) & (res.looks.values == 1)  # every other look changed (or unregistered)
    assert every[y0 + 4:y1 - 4, x0 + 4:x1 - 4].all()
    np.testing.assert_allclose(res.sr.values[:, every], sd.sr.values[:, every], rtol=0, atol=1e-6)
    np.testing.assert_allclose(res.uncertainty.values[:, every], sd.uncertainty.values[:, every], rtol=0, atol=1e-6)


# --------------------------------------------------------------------------- nodata


def test_a_cloud_on_the_date_stays_nodata(static):
    cube = static.copy()
    cube[0, :, 4:10, 4:10] = np.nan  # a cloud on the date asked for; the other dates are clear there
    res = superresolve(cube.chunk({"time": 1}), 2, looks=5).isel(time=0).compute()
    hole = np.zeros((4 * LR[0], 4 * LR[1]), bool)
    hole[16:40, 16:40] = True
    assert np.isnan(res.sr.values[:, hole]).all() and np.isnan(res.uncertainty.values[:, hole]).all()
    assert (res.looks.values[hole] == 0).all() and (res.changed.values[hole] == 0).all()
    assert np.isfinite(res.sr.values[:, ~hole]).all() and (res.looks.values[~hole] >= 1).all()


def test_a_cloud_on_another_date_removes_a_look_there_only(static, static_sr):
    cube = static.copy()
    cube[2, :, 26:32, 20:26] = np.nan  # a cloud on another date
    res = superresolve(cube.chunk({"time": 1}), 2, looks=5).isel(time=0).compute()
    clear = static_sr.isel(time=0)
    assert np.isfinite(res.sr.values).all() and np.isfinite(res.uncertainty.values).all()
    cloud = (slice(108, 124), slice(84, 100))  # inside by an LR pixel
    fewer, before = res.looks.values[cloud].astype(int), clear.looks.values[cloud].astype(int)
    # one look fewer wherever the clear run used that date there (a few pixels had left it out as changed)
    assert (fewer <= before).all() and (fewer < before).mean() > 0.9
    # ... and only there (away from the cloud by an LR pixel)
    near = np.zeros((4 * LR[0], 4 * LR[1]), bool)
    near[100:132, 76:108] = True
    same = res.looks.values[~near] == clear.looks.values[~near]
    assert same.mean() > 0.95, f"{1 - same.mean():.1%} of the pixels away from the cloud changed their looks"


# --------------------------------------------------------------------------- errors


def test_errors_name_the_fix(small):
    with pytest.raises(InputError, match="is single-date: leave looks=None"):
        superresolve(small, 2, looks=3, model="bicubic")
    with pytest.raises(InputError, match="needs a time dim.*leave looks=None"):
        superresolve(small.isel(time=0), 2, looks=3)
    with pytest.raises(InputError, match="four 10 m bands.*super-resolve the 20 m bands single-date"):
        superresolve(make_cube(16, 16, times=2, bands=("B04", "B03", "B02", "B08", "B05")), 2, looks=2,
                     bands=["B05"])
    with pytest.raises(InputError, match="return_samples=False"):
        superresolve(small, 2, looks=2, return_samples=True).compute()
    with pytest.raises(InputError, match="positive time span"):
        superresolve(small, 2, looks=2, window="soon")


# --------------------------------------------------------------------------- CLI, Zarr


def test_cli_and_zarr_give_the_python_result(small, tmp_path):
    from xr_opensr import cli

    src, out = tmp_path / "series.zarr", tmp_path / "sr.zarr"
    small.to_dataset(name="reflectance").to_zarr(src, zarr_format=2)  # (a v3 source: see the report)
    assert cli.main(["superresolve", str(src), str(out), "--looks", "3", "--samples", "2"]) == 0
    back = xr.open_zarr(out, decode_coords="all").compute()
    direct = superresolve(small, 2, looks=3).compute()
    for name in ("sr", "uncertainty", "looks", "changed"):
        assert back[name].dtype == direct[name].dtype, name
        np.testing.assert_array_equal(back[name].values, direct[name].values, err_msg=name)
    np.testing.assert_array_equal(back.look_time.values, direct.look_time.values)
    assert back.attrs["looks"] == 3 and back.attrs["model"] == "xr-opensr-multidate"
    # the Python result through Zarr
    direct.to_zarr(tmp_path / "direct.zarr")
    again = xr.open_zarr(tmp_path / "direct.zarr", decode_coords="all").compute()
    xr.testing.assert_identical(again, direct)


# --------------------------------------------------------------------------- real data


def test_real_l1c_time_series_end_to_end():
    from multidate_data import EOLEARN_CLEAR, eolearn_stack

    stack = eolearn_stack().isel(y=slice(20, 60), x=slice(30, 70))  # 5 dates, the first two cloudy as they are
    # Sentinel Hub resampled the scenes to 9.995 x 9.997 m pixels: label them 10 m (0.05 % scale: < 0.02 px
    # over the window), as superresolve needs the 10 m grid
    x0, y0 = float(stack.x[0]) - 5.0, float(stack.y[0]) + 5.0
    stack = stack.assign_coords(x=x0 + 10.0 * (np.arange(stack.sizes["x"]) + 0.5),
                                y=y0 - 10.0 * (np.arange(stack.sizes["y"]) + 0.5))
    stack = stack.rio.write_transform(stack.rio.transform(recalc=True))
    assert np.isfinite(stack.values).all()
    lazy = superresolve(stack.chunk({"time": 1}), 2, looks=4, window="60D")  # the clear dates: 10-60 days apart
    clear = [i for i, t in enumerate(stack.time.values) if str(t)[:10] in EOLEARN_CLEAR]
    res = lazy.isel(time=clear).compute()
    assert np.isfinite(res.sr.values).all() and np.isfinite(res.uncertainty.values).all()
    assert (res.looks.values >= 1).all()
    # the other clear dates register: more than one look on most of the (textured, rural) window
    for t in range(len(clear)):
        more = (res.looks.isel(time=t).values > 1).mean()
        assert more > 0.5, f"{str(res.time.values[t])[:10]}: {more:.0%} of the pixels with > 1 look"
    # the cloudy dates did not disturb the clear ones: close to the single-date result (reflectance units)
    sd = superresolve(stack.isel(time=clear[:1]), 2).isel(time=0).compute()
    assert np.abs(res.sr.isel(time=0).values - sd.sr.values).mean() < 0.01
