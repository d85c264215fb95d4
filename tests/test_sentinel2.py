"""xr_opensr.sentinel2: the band table and the one DN -> reflectance rule, checked against their users."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import xarray as xr

from xr_opensr import _graph, errors, plot, sentinel2, stac, stac_conventions
from xr_opensr.sentinel2 import ReflectanceRule, reflectance_rule, to_reflectance


def dn_cube(values=None, **attrs) -> xr.DataArray:
    """(band=2, y=2, x=3) uint16 DN, one nodata (0) pixel."""
    values = np.array([[[0, 1000, 2000], [65535, 5, 6]], [[7, 8, 9], [10, 11, 12]]], np.uint16) if values is None \
        else values
    return xr.DataArray(values, dims=("band", "y", "x"), coords={"band": ["B04", "B8A"]}, attrs=attrs)


# --------------------------------------------------------------------------- the band table


def test_band_table_resolutions_wavelengths_and_aliases():
    res = {name: band.resolution_m for name, band in sentinel2.BANDS.items() if name != "SCL"}
    assert sorted(n for n, r in res.items() if r == 10) == ["B02", "B03", "B04", "B08"]
    assert sorted(n for n, r in res.items() if r == 20) == ["B05", "B06", "B07", "B11", "B12", "B8A"]
    assert sorted(n for n, r in res.items() if r == 60) == ["B01", "B09", "B10"]
    waves = [b.wavelength_nm for n, b in sentinel2.BANDS.items() if n != "SCL"]
    assert waves == sorted(waves) and 440 < waves[0] and waves[-1] < 2210  # B01 ... B12 in spectral order
    assert sentinel2.BAND_ALIASES["B04"] == ("B04", "B4", "red")  # the accessor's error text shows B4/red
    assert sentinel2.BANDS["B8A"].aliases == ("B8A", "nir08")
    assert {sentinel2.canonical_band(k) for k in ("rededge1", "B5", "b05", "B05_20m")} == {"B05"}
    assert sentinel2.canonical_band("swir16") == "B11" and sentinel2.canonical_band("NIR08") == "B8A"
    assert sentinel2.canonical_band("B99") is None and sentinel2.canonical_band(4) is None
    assert sentinel2.MODEL_BANDS == ("B04", "B03", "B02", "B08") and sentinel2.RGB_BANDS == sentinel2.MODEL_BANDS[:3]
    assert "wavelength" in sentinel2.BAND_DIM_NAMES and sentinel2.GRID_RESOLUTION_M == 10.0


def test_asset_keys_have_one_home():
    assert stac.S2_BANDS is sentinel2.ASSET_KEYS is stac_conventions.ASSET_KEYS
    assert "B10" not in sentinel2.ASSET_KEYS  # L1C only: no L2A asset
    assert sentinel2.ASSET_KEYS["B8A"] == ("nir08", "B8A", "B8A_20m")
    assert sentinel2.ASSET_KEYS["SCL"] == ("scl", "SCL", "SCL_20m")
    assert stac.DEFAULT_BANDS is sentinel2.MODEL_BANDS and stac.SCL_MASKED is sentinel2.SCL_MASKED
    assert set(sentinel2.SCL_MASKED) == {0, 1, 3, 8, 9, 10} and len(sentinel2.SCL_CLASSES) == 12


# --------------------------------------------------------------------------- DN -> reflectance


def test_integer_dn_without_declared_scale_are_dn_over_10000():
    for attrs in ({}, {"scale_factor": 1.0, "add_offset": 0.0}):  # rioxarray's identity counts as none
        rule = reflectance_rule(dn_cube(**attrs, nodata=0), "band")
        np.testing.assert_array_equal(rule.scale, [1e-4, 1e-4])
        assert rule.offset is None
        np.testing.assert_array_equal(rule.nodata, [0.0, 0.0])
    assert reflectance_rule(dn_cube().astype(np.float32), "band") == ReflectanceRule(None, None, None)


def test_declared_and_per_band_conversion():
    rule = reflectance_rule(dn_cube(scales=[1e-4, 2e-4], offsets=[-0.1, 0.0]), "band", picks=[1])
    np.testing.assert_array_equal(rule.scale, [2e-4])
    np.testing.assert_array_equal(rule.offset, [0.0])
    with pytest.raises(errors.InputError, match=r"'scale_factor' has 3 values for 2 bands; give one, or one per band"):
        reflectance_rule(dn_cube(scales=[1, 2, 3]), "band")


def test_8bit_needs_a_declared_scale():
    with pytest.raises(errors.InputError, match=r"holds uint8 values without a declared scale.*scale_factor'\] = 1 / N"):
        reflectance_rule(dn_cube().astype(np.uint8), "band")
    assert reflectance_rule(dn_cube().astype(np.uint8).assign_attrs(scale_factor=1 / 250), "band").scale[0] == 1 / 250


def test_nodata_keys_in_order_then_rio():
    assert reflectance_rule(dn_cube(_FillValue=7, nodata=5)).nodata[0] == 5
    assert reflectance_rule(dn_cube(missing_value=9)).nodata[0] == 9
    cube = dn_cube()
    cube.encoding["_FillValue"] = 3  # integer data: the encoding counts too
    assert reflectance_rule(cube).nodata[0] == 3
    import rioxarray  # noqa: F401

    assert reflectance_rule(dn_cube().rio.write_nodata(11)).nodata[0] == 11
    assert reflectance_rule(dn_cube()).nodata is None


def test_cf_decoded_floats_from_integers_are_dn():
    dec = dn_cube().astype(np.float32)
    dec.encoding.update(dtype="uint16", _FillValue=0)  # Zarr of uint16 DN decoded by xarray
    rule = reflectance_rule(dec, "band")
    np.testing.assert_array_equal(rule.scale, [1e-4, 1e-4])
    assert rule.nodata is None or np.isnan(rule.nodata).all()  # the fill values are NaN already (rio: NaN)
    dec.encoding.update(scale_factor=1e-4)  # decoded with a scale: reflectance already
    assert reflectance_rule(dec, "band") == ReflectanceRule(None, None, None)


@pytest.mark.parametrize("attrs", [{"nodata": 0}, {"scales": [1e-4, 2e-4], "offsets": [-0.1, 0.0], "nodata": 0}, {}])
def test_rule_apply_is_the_graph_arithmetic(attrs):
    cube = dn_cube(**attrs)
    rule = reflectance_rule(cube, "band")
    ours = rule.apply(cube.values[None])
    graph = _graph._to_reflectance(cube.values[None], rule.scale, rule.offset, rule.nodata)
    np.testing.assert_array_equal(ours, graph)  # bit-identical to what the model reads
    np.testing.assert_array_equal(to_reflectance(cube).values, ours[0])
    assert np.isnan(ours[0, 0, 0, 0]) == ("nodata" in attrs)


def test_to_reflectance_is_lazy_idempotent_and_plot_uses_it():
    cube = dn_cube(nodata=0, units="DN").chunk({"x": 1})
    out = to_reflectance(cube)
    assert isinstance(out.data, da.Array) and out.dtype == np.float32
    assert "nodata" not in out.attrs and out.attrs["units"] == "DN" and not out.encoding
    np.testing.assert_array_equal(to_reflectance(out).values, out.values)  # a second call changes nothing
    np.testing.assert_array_equal(plot.to_reflectance(cube).values, out.values)
    assert np.isnan(out.values[0, 0, 0]) and out.values[0, 0, 1] == np.float32(0.1)


def test_stack_of_per_variable_rules():
    a = ReflectanceRule(np.array([1e-4]), None, np.array([0.0]))
    b = ReflectanceRule(None, None, None)
    rule = ReflectanceRule.stack([a, b])
    np.testing.assert_array_equal(rule.scale, [1e-4, 1.0])
    assert rule.offset is None
    np.testing.assert_array_equal(rule.nodata, [0.0, np.nan])


def test_l2a_reflectance_is_esa_formula():
    dn = xr.DataArray(np.array([0, 1000, 1001, 12345], np.uint16))
    for offset in (0, sentinel2.BOA_OFFSET_DN):
        got = sentinel2.l2a_reflectance(dn, np.float32(offset)).values
        want = (dn.values.astype(np.float32) + np.float32(offset)) / np.float32(10000)
        np.testing.assert_array_equal(got, want)
        assert got.dtype == np.float32
    assert sentinel2.QUANTIFICATION == 10000 and sentinel2.DN_SCALE == 1e-4
    assert stac.QUANTIFICATION == 10000 and stac.BOA_OFFSET_DN == -1000 == stac_conventions.BOA_OFFSET_DN
