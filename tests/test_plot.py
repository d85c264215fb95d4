"""``xr_opensr.plot.quicklook``: LR / SR / uncertainty, shared map extent, robust stretch, PNG."""

from __future__ import annotations

import builtins

import matplotlib
import numpy as np
import pytest
from conftest import ALL_BANDS, S2_BANDS, make_cube, make_dataset

import xr_opensr.accessor  # noqa: F401  (registers .opensr)
from xr_opensr import plot
from xr_opensr.errors import BandError, InputError

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


@pytest.fixture(scope="module")
def lr_and_result():
    lr = make_cube(12, 10)
    lr = lr.where(~((lr.y > lr.y[-3]) & (lr.x < lr.x[2])), 0).astype("uint16")  # a nodata corner
    lr.attrs["nodata"] = 0
    return lr, lr.opensr.superresolve(2, model="tiny", steps=2).compute()


def image_axes(fig):
    return [ax for ax in fig.axes if ax.get_images()]


def test_quicklook_three_panels_shared_extent_png(lr_and_result, tmp_path):
    assert matplotlib.get_backend().lower() == "agg"
    lr, result = lr_and_result
    fig = plot.quicklook(lr, result)
    axes = image_axes(fig)
    assert len(axes) == 3
    extents = [tuple(ax.get_images()[0].get_extent()) for ax in axes]
    # map coordinates in metres: pixel edges of the 10 m grid (UTM 33N, 500 000 E, 5 000 000 N)
    assert extents[0] == extents[1] == extents[2] == (500_000.0, 500_100.0, 4_999_880.0, 5_000_000.0)
    assert [ax.get_xlim() for ax in axes] == [(500_000.0, 500_100.0)] * 3
    assert "x (m" in axes[0].get_xlabel() and "y (m" in axes[0].get_ylabel()
    # RGB for LR and SR, single band + colorbar in reflectance std for the uncertainty
    assert axes[0].get_images()[0].get_array().shape == (12, 10, 4)
    assert axes[1].get_images()[0].get_array().shape == (48, 40, 4)
    assert axes[2].get_images()[0].get_array().ndim == 2
    colorbars = [ax for ax in fig.axes if ax not in axes]
    assert len(colorbars) == 1 and colorbars[0].get_ylabel() == "reflectance std"
    path = tmp_path / "ql.png"
    fig.savefig(path, dpi=50)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    plt.close(fig)


def test_quicklook_stretch_is_computed_on_lr_and_applied_to_sr(lr_and_result):
    lr, result = lr_and_result
    fig = plot.quicklook(lr, result, robust=(0, 100))
    lr_rgba = image_axes(fig)[0].get_images()[0].get_array()
    sr_rgba = image_axes(fig)[1].get_images()[0].get_array()
    refl = plot.to_reflectance(lr.sel(band=["B04", "B03", "B02"])).values
    lo, hi = np.nanmin(refl, axis=(1, 2)), np.nanmax(refl, axis=(1, 2))
    valid = np.isfinite(refl).all(axis=0)
    expected = (refl - lo[:, None, None]) / (hi - lo)[:, None, None]
    np.testing.assert_allclose(np.moveaxis(lr_rgba[..., :3], -1, 0)[:, valid], expected[:, valid], atol=1e-6)
    assert lr_rgba[..., 3][~valid].max() == 0  # nodata is transparent
    sr = result.sr.sel(band=["B04", "B03", "B02"]).values
    expected_sr = np.clip((sr - lo[:, None, None]) / (hi - lo)[:, None, None], 0, 1)
    ok = np.isfinite(sr).all(axis=0)
    np.testing.assert_allclose(np.moveaxis(sr_rgba[..., :3], -1, 0)[:, ok], expected_sr[:, ok], atol=1e-6)
    plt.close(fig)


def test_quicklook_uncertainty_is_rgb_mean(lr_and_result):
    lr, result = lr_and_result
    fig = plot.quicklook(lr, result)
    shown = np.ma.filled(image_axes(fig)[2].get_images()[0].get_array(), np.nan)
    np.testing.assert_allclose(shown, result.uncertainty.sel(band=["B04", "B03", "B02"]).mean("band").values,
                               rtol=1e-6, equal_nan=True)
    plt.close(fig)


def test_quicklook_dataset_input_time_and_given_axes():
    ds = make_dataset(8, 8, names=("red", "green", "blue", "nir"), times=2)
    result = ds.opensr.superresolve(1, model="tiny", steps=1).compute()
    fig, axes = plt.subplots(1, 3)
    out = plot.quicklook(ds, result, time=1, ax=axes)
    assert out is fig and all(ax.get_images() for ax in axes)
    assert str(ds.time.values[1])[:10] in axes[0].get_title()
    plt.close(fig)


def test_quicklook_errors(lr_and_result):
    lr, result = lr_and_result
    with pytest.raises(BandError, match="no band 'B05'"):
        plot.quicklook(lr, result, bands=("B05", "B03", "B02"))
    with pytest.raises(BandError, match="3 bands"):
        plot.quicklook(lr, result, bands=("B04", "B03"))
    with pytest.raises(InputError, match="superresolve"):
        plot.quicklook(lr, result.sr)
    with pytest.raises(InputError, match="percentiles"):
        plot.quicklook(lr, result, robust=(98, 2))
    with pytest.raises(InputError, match="three matplotlib Axes"):
        plot.quicklook(lr, result, ax=[None])


def test_quicklook_without_matplotlib_names_the_extra(monkeypatch, lr_and_result):
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    with pytest.raises(ImportError, match=r'pip install "xr-opensr\[plot\]"'):
        plot.quicklook(*lr_and_result)


def test_plot_module_imports_matplotlib_lazily():
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(plot))
    top = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
    names = [a.name for n in top for a in n.names] + [n.module or "" for n in top if isinstance(n, ast.ImportFrom)]
    assert not any(name.startswith("matplotlib") for name in names)


def test_quicklook_adds_a_swir_false_colour_row_for_ten_bands(model20, tmp_path):
    lr = make_cube(12, 10, bands=ALL_BANDS)
    result = lr.opensr.superresolve(2, model="tiny", steps=2, bands="all", model20=model20).compute()
    fig = plot.quicklook(lr, result)
    axes = image_axes(fig)
    assert len(axes) == 6 and "B12/B8A/B04" in axes[3].get_title() and "SWIR" in axes[5].get_title()
    assert axes[4].get_images()[0].get_array().shape == (48, 40, 4)
    shown = np.ma.filled(axes[5].get_images()[0].get_array(), np.nan)
    np.testing.assert_allclose(shown, result.uncertainty.sel(band=["B12", "B8A", "B04"]).mean("band").values,
                               rtol=1e-6)
    refl = plot.to_reflectance(lr.sel(band=["B12", "B8A", "B04"])).values  # the LR composite, stretched 2-98 %
    lo, hi = np.nanpercentile(refl, 2, axis=(1, 2)), np.nanpercentile(refl, 98, axis=(1, 2))
    expected = np.clip((refl - lo[:, None, None]) / (hi - lo)[:, None, None], 0, 1)
    np.testing.assert_allclose(np.moveaxis(axes[3].get_images()[0].get_array()[..., :3], -1, 0), expected, atol=1e-6)
    fig.savefig(tmp_path / "ql10.png", dpi=40)
    plt.close(fig)
    four = plot.quicklook(lr, result, swir=False)  # or true colour only
    assert len(image_axes(four)) == 3
    plt.close(four)
    with pytest.raises(BandError, match="no band 'B12'"):
        plot.quicklook(lr, result.sel(band=list(S2_BANDS)), swir=True)
