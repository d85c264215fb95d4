"""Every band through the lazy pipeline: the 20 m bands (B05, B06, B07, B8A, B11, B12) next to the 10 m ones.

The 20 m model is a seeded random one (``model20`` fixture): fast and deterministic, its output not
meaningful; the tests check the plumbing (bands, grid phase, nodata, laziness, errors), not quality.
"""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from conftest import ALL_BANDS, CRS, S2_BANDS, X0, Y0, make_cube, raise_if_dask_computes

import xr_opensr  # noqa: F401  (registers .opensr)
from xr_opensr import _inputs, errors
from xr_opensr.sensor import PSF_SIGMA_HR, degrade
from xr_opensr.sentinel2 import GUIDED_BANDS, MODEL_BANDS
from xr_opensr.testing import s2_cube

KW = {"model": "tiny", "steps": 2}  # tiny: patch 16, overlap 4


@pytest.fixture
def kw(model20):
    return {**KW, "model20": model20}


# --------------------------------------------------------------------------- what is asked for


@pytest.mark.parametrize(("bands", "requested", "guided"), [
    (None, list(MODEL_BANDS), False),
    ("all", [*MODEL_BANDS, *GUIDED_BANDS], True),
    ("ALL", [*MODEL_BANDS, *GUIDED_BANDS], True),
    (["swir16", "B04"], ["B11", "B04"], True),
    (["B08", "B04", "B03", "B02"], ["B08", "B04", "B03", "B02"], False),
    ({"B8A": "narrow", "B04": "r"}, ["B8A", "B04"], True),
    ([1, 2, 3, 4], list(MODEL_BANDS), False),  # the four-band form: input labels of the model bands
    ({"B04": "r", "B03": "g", "B02": "b", "B08": "n"}, list(MODEL_BANDS), False),
])
def test_band_request(bands, requested, guided):
    request = _inputs.band_request(bands, MODEL_BANDS)
    assert request.requested == requested and request.guided == guided
    assert [b for b, _ in request.wanted][:4] == list(MODEL_BANDS)
    if guided:  # the 20 m model sees every 20 m band the input holds
        assert sorted(b for b, _ in request.wanted[4:] + request.optional) == sorted(GUIDED_BANDS)


def test_accessor_knows_the_native_20m_bands(dataset_factory):
    assert make_cube(4, 4, bands=("red", "nir08", "B12", "B11")).opensr.bands20 == ["B8A", "B11", "B12"]
    assert make_cube(4, 4).opensr.bands20 == []
    assert dataset_factory(4, 4, names=("B04", "B03", "B02", "rededge1")).opensr.bands20 == ["B05"]


# --------------------------------------------------------------------------- results


def test_ten_bands_keep_the_four_band_results_exactly(kw):
    cube = make_cube(20, 18, times=2, bands=ALL_BANDS, chunks={"y": 8, "x": 8})
    four = cube.opensr.superresolve(2, **KW).compute()
    with raise_if_dask_computes():
        ten = cube.opensr.superresolve(2, bands="all", **kw)
    assert list(ten.band.values) == list(ALL_BANDS) and ten.sr.shape == (2, 10, 80, 72)
    assert ten.attrs["model20"] == "s2-20m" and "model20" not in four.attrs
    ten = ten.compute()
    xr.testing.assert_identical(ten.sel(band=list(S2_BANDS)).drop_attrs(), four.drop_attrs())
    for name in ("sr", "uncertainty"):  # every band, every valid pixel, with an uncertainty
        values = ten[name].sel(band=list(GUIDED_BANDS)).values
        assert np.isfinite(values).all() and (values >= 0).all()
    assert float(ten.uncertainty.sel(band="B11").mean()) > 0
    # a subset, in the order asked, is the same numbers: the 20 m model saw the same six bands
    some = cube.opensr.superresolve(2, bands=["B12", "nir", "B05"], **kw).compute()
    assert list(some.band.values) == ["B12", "B08", "B05"]
    np.testing.assert_array_equal(some.sr.values, ten.sr.sel(band=["B12", "B08", "B05"]).values)


def test_dataset_of_ten_variables_equals_the_dataarray(kw):
    cube = make_cube(14, 12, bands=ALL_BANDS)
    ds = cube.to_dataset("band")
    for name in ds.data_vars:
        ds[name].attrs = {"nodata": 0}
    a = cube.opensr.superresolve(2, bands="all", **kw).compute()
    b = ds.opensr.superresolve(2, bands="all", **kw).compute()
    np.testing.assert_array_equal(a.sr.values, b.sr.values)
    np.testing.assert_array_equal(a.uncertainty.values, b.uncertainty.values)


def test_missing_20m_bands_are_stood_in_for(kw):
    full = make_cube(12, 12, bands=ALL_BANDS)
    part = full.sel(band=[*S2_BANDS, "B11"])
    res = part.opensr.superresolve(2, bands="all", **kw)  # "all": the bands the input holds
    assert list(res.band.values) == [*S2_BANDS, "B11"]
    assert np.isfinite(res.sr.values).all()
    with pytest.raises(errors.BandError, match=r"missing bands B12"):
        part.opensr.superresolve(2, bands=["B11", "B12"], **kw)


@pytest.mark.parametrize("origin", [(X0, Y0), (X0 + 10, Y0), (X0, Y0 - 10), (X0 + 10, Y0 + 10)])
def test_20m_grid_phase_gives_results_consistent_with_the_native_pixels(kw, origin):
    """Brought back to 20 m by the sensor model, the 2.5 m result must give the native 20 m pixels, whether
    the cube starts on a 20 m pixel or in its middle; measured against the wrong blocks it does not."""
    cube = s2_cube(24, 22, bands=("B04", "B03", "B02", "B08", "B11"), dtype="float32", origin=origin, crs=CRS)
    py, px = _inputs.phase20(_inputs.lr_geobox(cube, "y", "x"))
    assert (py, px) == (int(origin[1] != Y0), int(origin[0] != X0))
    lr = cube.sel(band="B11").values
    assert (lr[py:py + 20:2, px:px + 20:2] == lr[py + 1:py + 20:2, px + 1:px + 20:2]).all()  # 2 x 2 blocks
    sr = cube.opensr.superresolve(2, bands=["B11"], **kw).sr.values[0]

    def error(oy: int, ox: int) -> float:
        rows, cols = (lr.shape[0] - oy) // 2, (lr.shape[1] - ox) // 2
        native = lr[oy:oy + 2 * rows:2, ox:ox + 2 * cols:2]
        back = degrade(sr[4 * oy:4 * (oy + 2 * rows), 4 * ox:4 * (ox + 2 * cols)], 8, psf_sigma=2 * PSF_SIGMA_HR)
        return float(np.abs(back - native)[1:-1, 1:-1].mean())  # inner pixels: the PSF reaches past the edge

    right, wrong = error(py, px), error(1 - py, 1 - px)
    assert right < 0.004 and right < 0.25 * wrong


def test_nodata_in_any_band_is_nodata_in_every_band(kw):
    cube = make_cube(16, 16, bands=ALL_BANDS, dtype="float32")
    cube[ALL_BANDS.index("B12"), 4:8, 6:10] = np.nan  # a 20 m band's nodata: 2 x 2 native pixels
    res = cube.opensr.superresolve(2, bands="all", **kw).compute()
    hole = np.zeros((64, 64), bool)
    hole[16:32, 24:40] = True
    assert np.isnan(res.sr.values[:, hole]).all() and np.isnan(res.uncertainty.values[:, hole]).all()
    assert np.isfinite(res.sr.values[:, ~hole]).all()


# --------------------------------------------------------------------------- errors, before any compute


def _ten(**kwargs):
    return make_cube(8, 8, bands=ALL_BANDS, **kwargs)


ERRORS = [
    (lambda: make_cube(8, 8, bands=("B05", "B04", "B03", "B02")), {"bands": "all"}, errors.BandError,
     r"20 m bands .* guided by the four 10 m bands .* lacks B08 \(B8/nir\).*load_s2\(\.\.\., bands='all'\)"),
    (lambda: make_cube(8, 8, bands=("B11",)), {"bands": ["B11"]}, errors.BandError,
     r"lacks B04 \(B4/red\), B03 \(B3/green\), B02 \(B2/blue\), B08"),
    (_ten, {"bands": "everything"}, errors.BandError, r"bands='everything' is not understood: give 'all'"),
    (_ten, {"bands": ["B11", "swir16"]}, errors.BandError, "names a band twice"),
    (_ten, {"bands": "all", "return_samples": True}, errors.InputError,
     r"return_samples=True with the 20 m bands .* use return_samples=False"),
    (_ten, {"bands": "all", "overlap": 3}, errors.InputError, r"patch=16 and overlap=3 .* both must be even"),
    (lambda: _ten().assign_coords(x=lambda c: c.x + 5), {"bands": "all"}, errors.GridError,
     r"x edge of the grid \(500005.000 m\) is not on a multiple of 10 m"),
    (_ten, {"bands": "all", "model20": "no-such-model"}, errors.InputError, r"no guided model 'no-such-model'"),
]


@pytest.mark.parametrize(("make", "kwargs", "error", "match"), ERRORS)
def test_errors_before_compute(make, kwargs, error, match, model20):
    obj = make()
    with raise_if_dask_computes(), pytest.raises(error, match=match):
        obj.chunk().opensr.superresolve(2, **{**KW, "model20": model20, **kwargs})


def test_ten_bands_without_20m_request_never_load_the_20m_model(monkeypatch):
    from xr_opensr import _runtime

    def fail(*args, **kwargs):
        raise AssertionError("the 20 m model was loaded")

    monkeypatch.setattr(_runtime, "get_guided", fail)
    res = make_cube(8, 8, bands=ALL_BANDS).opensr.superresolve(2, **KW, model20="no-such-model")
    assert list(res.band.values) == list(S2_BANDS)
    res.compute()
