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
from xr_opensr import _inputs, errors, geometry
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
    py, px = geometry.phase20(geometry.lr_geobox(cube, "y", "x"))
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


def test_nodata_in_a_10m_band_is_nodata_in_every_band(kw):
    """The four 10 m bands are the model's input and the 20 m bands' guide: a hole in one blanks all."""
    cube = make_cube(16, 16, bands=ALL_BANDS, dtype="float32")
    cube[ALL_BANDS.index("B03"), 4:8, 6:10] = np.nan
    res = cube.opensr.superresolve(2, bands="all", **kw).compute()
    hole = np.zeros((64, 64), bool)
    hole[16:32, 24:40] = True
    assert np.isnan(res.sr.values[:, hole]).all() and np.isnan(res.uncertainty.values[:, hole]).all()
    assert np.isfinite(res.sr.values[:, ~hole]).all()


def test_nodata_in_a_20m_band_stays_in_that_band(kw):
    """Issue 19 finding 1: a 20 m band's hole is NaN in that band only; the other bands are computed."""
    cube = make_cube(16, 16, bands=ALL_BANDS, dtype="float32")
    four = cube.sel(band=list(S2_BANDS)).opensr.superresolve(2, **KW).compute()
    cube[ALL_BANDS.index("B12"), 4:8, 6:10] = np.nan  # 2 x 2 native pixels
    res = cube.opensr.superresolve(2, bands="all", **kw).compute()
    hole = np.zeros((64, 64), bool)
    hole[16:32, 24:40] = True
    b12 = res.sr.sel(band="B12").values
    assert np.isnan(b12[hole]).all() and np.isfinite(b12[~hole]).all()
    assert np.isnan(res.uncertainty.sel(band="B12").values[hole]).all()
    others = res.drop_sel(band="B12")
    assert np.isfinite(others.sr.values).all() and np.isfinite(others.uncertainty.values).all()
    np.testing.assert_array_equal(res.sr.sel(band=list(S2_BANDS)).values, four.sr.values)


@pytest.mark.parametrize("bands", ["all", ["B04", "B03", "B02", "B08", "B11"]])
@pytest.mark.parametrize("dtype", ["float32", "uint16"])
def test_a_20m_band_without_any_data_blanks_only_itself(kw, bands, dtype):
    """B12 all nodata (NaN, or DN 0 = the declared nodata): the 10 m bands come out as in a four-band run,
    the other 20 m bands are computed, B12 (when asked for) is NaN; also when B12 is not asked for."""
    cube = make_cube(16, 14, bands=ALL_BANDS, dtype=dtype)
    four = cube.sel(band=list(S2_BANDS)).opensr.superresolve(2, **KW).compute()
    cube[ALL_BANDS.index("B12")] = np.nan if dtype == "float32" else 0
    res = cube.opensr.superresolve(2, bands=bands, **kw).compute()
    np.testing.assert_array_equal(res.sr.sel(band=list(S2_BANDS)).values, four.sr.values)
    np.testing.assert_array_equal(res.uncertainty.sel(band=list(S2_BANDS)).values, four.uncertainty.values)
    computed = [b for b in res.band.values if b != "B12"]
    assert np.isfinite(res.sr.sel(band=computed).values).all()
    if "B12" in res.band.values:
        assert np.isnan(res.sr.sel(band="B12").values).all()


def test_a_hole_in_a_20m_band_leaves_a_10m_band_alone(kw):
    cube = make_cube(16, 16, bands=ALL_BANDS, dtype="float32")
    cube[ALL_BANDS.index("B05"), 2:10, 4:12] = np.nan
    res = cube.opensr.superresolve(2, bands=["B04", "B11"], **kw).compute()
    assert np.isfinite(res.sr.values).all() and np.isfinite(res.uncertainty.values).all()


@pytest.mark.parametrize(("height", "width"), [(15, 16), (16, 15), (31, 29)])
def test_a_20m_pixel_cut_by_the_bottom_or_right_edge_keeps_its_own_value(kw, monkeypatch, height, width):
    """Issue 19 finding 4: at grid phase 0 an odd last row/column holds half a 20 m pixel; the 20 m model
    must receive that pixel's value, not its average with the neighbour reflected across the edge."""
    import dask

    from xr_opensr.models.guided import GuidedSR

    cube = make_cube(height, width, bands=("B04", "B03", "B02", "B08", "B11"), dtype="float32")
    b11 = cube.sel(band="B11").values.copy()
    if height % 2:
        b11[-3:-1, :], b11[-1, :] = 0.20, 0.40  # the cut row 0.40; reflection would bring in 0.20
    if width % 2:
        b11[:, -3:-1], b11[:, -1] = 0.20, 0.40
    cube.loc[{"band": "B11"}] = b11
    seen = []
    original = GuidedSR.superresolve

    def spy(self, lr10, target20, *args):
        seen.append(np.array(target20[:, GUIDED_BANDS.index("B11")]))
        return original(self, lr10, target20, *args)

    monkeypatch.setattr(GuidedSR, "superresolve", spy)
    with dask.config.set(scheduler="sync"):
        res = cube.opensr.superresolve(2, bands=["B11"], **kw).compute()
    assert np.isfinite(res.sr.values).all()
    values = np.concatenate([t.ravel() for t in seen])
    assert np.isclose(values, 0.40, rtol=0, atol=1e-6).any()
    assert not np.isclose(values, 0.30, rtol=0, atol=1e-6).any()  # the old bug: (0.40 + 0.20) / 2
    if (height, width) == (15, 16):  # one patch of 16: native row 7 is the cut one
        np.testing.assert_allclose(seen[0][:, 7, :], 0.40, rtol=0, atol=1e-7)
    if (height, width) == (16, 15):
        np.testing.assert_allclose(seen[0][:, :, 7], 0.40, rtol=0, atol=1e-7)


@pytest.mark.parametrize("shift", [(0, 1), (1, 0)])
def test_20m_bands_off_the_20m_grid_are_refused(kw, shift):
    """Issue 19 finding 5: 20 m data shifted by 10 m give 2 x 2 blocks that are not constant: InputError."""
    cube = make_cube(16, 16, bands=("B04", "B03", "B02", "B08", "B11"), dtype="float32")
    b11 = cube.sel(band="B11").values
    cube.loc[{"band": "B11"}] = np.roll(b11, shift, axis=(0, 1))
    res = cube.opensr.superresolve(2, bands=["B11"], **kw)  # lazy: the data are only known when computed
    with pytest.raises(errors.InputError, match=r"not on the Sentinel-2 20 m grid.*B11.*resampling='nearest'"):
        res.compute()
    ok = make_cube(16, 16, bands=("B04", "B03", "B02", "B08", "B11"), dtype="float32")
    assert np.isfinite(ok.opensr.superresolve(2, bands=["B11"], **kw).sr.values).all()


@pytest.mark.parametrize(("labels", "bands", "match"), [
    (("B04", "B03", "B02", "B08", "B05", "B06", "B07", "B8A", "B11", "B11"), "all", r"band B11 has 2 labels"),
    (("B04", "B04", "B02", "B08"), None, r"band B04 has 2 labels"),
    (("B04", "red", "B02", "B08", "B03"), None, r"band B04 has 2 labels .*'B04', 'red'"),
])
def test_duplicate_band_labels_are_refused(labels, bands, match, model20):
    """Issue 19 finding 8: two labels of one band are ambiguous (a mislabelled band), never the first one."""
    cube = make_cube(8, 8, bands=labels)
    with raise_if_dask_computes(), pytest.raises(errors.BandError, match=match):
        cube.opensr.superresolve(2, bands=bands, **KW, model20=model20)


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
    from xr_opensr.models import chain, guided

    def fail(*args, **kwargs):
        raise AssertionError("the 20 m model was loaded")

    monkeypatch.setattr(guided, "load_guided", fail)
    monkeypatch.setattr(chain.Chain, "run", fail)
    res = make_cube(8, 8, bands=ALL_BANDS).opensr.superresolve(2, **KW, model20="no-such-model")
    assert list(res.band.values) == list(S2_BANDS)
    res.compute()
