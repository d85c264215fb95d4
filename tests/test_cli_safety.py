"""The command line's safety rules (issue 19): ``--overwrite`` replaces only outputs of xr-opensr, ``--bands``
gives exactly the bands asked for, ``--time`` stays inside the cube and is recorded. (Ctrl-C once the outputs
are published: ``tests/test_faults.py``.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import xarray as xr
from conftest import ALL_BANDS, make_cube, make_dataset
from test_cli import FAST, SR_KW, assert_cog, write_geotiff

import xr_opensr.accessor  # noqa: F401  (registers .opensr)
from xr_opensr import _io
from xr_opensr.cli import main


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    return write_geotiff(tmp_path_factory.mktemp("in") / "s2.tif", make_cube(12, 10))


def tree(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` (or the file itself) with its bytes."""
    if path.is_file():
        return {path.name: path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def assert_refused(err: str, path: Path) -> None:
    assert "Traceback" not in err and "error:" in err
    assert str(path) in err and "not an output of xr-opensr" in err
    assert "remove it yourself" in err and "choose another output path" in err


# --------------------------------------------------------------------------- --overwrite deletes only outputs


@pytest.mark.parametrize("name", ["out.tif", "out_uncertainty.tif", "notzarr.zarr"])
def test_overwrite_never_deletes_a_folder_that_is_not_an_output(name, src, tmp_path, capsys):
    folder = tmp_path / name
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "data.txt").write_text("x")
    (folder / "notes.txt").write_text("the user's")
    before = tree(folder)
    out = tmp_path / ("notzarr.zarr" if name.endswith(".zarr") else "out.tif")
    assert main(["superresolve", str(src), str(out), "--overwrite", *FAST]) == 2
    assert_refused(capsys.readouterr().err, folder)
    assert tree(folder) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # nothing written, no temporaries


@pytest.mark.parametrize("what", ["text", "foreign geotiff", "folder"])
def test_overwrite_never_replaces_a_file_that_is_not_an_output(what, src, tmp_path, capsys):
    out = tmp_path / "out.tif"
    if what == "text":
        out.write_text("the user's notes, named out.tif")
    elif what == "foreign geotiff":  # a GeoTIFF, but not one xr-opensr wrote (e.g. an input scene)
        write_geotiff(out, make_cube(8, 8))
    else:
        out.mkdir()
    before = tree(out) if what != "folder" else {}
    assert main(["superresolve", str(src), str(out), "--overwrite", *FAST]) == 2
    assert_refused(capsys.readouterr().err, out)
    assert (tree(out) if what != "folder" else {}) == before and out.exists()
    assert not _io.uncertainty_path(out).exists()


def test_overwrite_refuses_a_zarr_store_xr_opensr_did_not_write(src, tmp_path, capsys):
    store = tmp_path / "theirs.zarr"
    make_dataset(8, 8).to_zarr(store, zarr_format=2, consolidated=True)
    before = tree(store)
    assert main(["superresolve", str(src), str(store), "--overwrite", *FAST]) == 2
    assert_refused(capsys.readouterr().err, store)
    assert tree(store) == before


def test_overwrite_refuses_an_output_store_holding_a_users_file(src, tmp_path, capsys):
    store = tmp_path / "sr.zarr"
    assert main(["superresolve", str(src), str(store), *FAST]) == 0
    (store / "my-notes.txt").write_text("keep me")
    assert main(["superresolve", str(src), str(store), "--overwrite", *FAST]) == 2
    err = capsys.readouterr().err
    assert_refused(err, store)
    assert "my-notes.txt" in err and (store / "my-notes.txt").read_text() == "keep me"


def test_overwrite_replaces_outputs_of_xr_opensr(src, tmp_path):
    for name in ("sr.tif", "sr.zarr"):
        out = tmp_path / name
        assert main(["superresolve", str(src), str(out), *FAST, "--seed", "1"]) == 0
        first = _io.open_result(out).sr.values
        assert main(["superresolve", str(src), str(out), "--overwrite", *FAST]) == 0
        assert not np.array_equal(_io.open_result(out).sr.values, first)  # replaced by the seed-0 run
    with xr.open_zarr(tmp_path / "sr.zarr") as ds:
        assert _io.RUN_TAG in ds.attrs  # a store says which run of xr-opensr wrote it


def test_demo_overwrite_refuses_files_it_did_not_write(tmp_path, capsys):
    out = tmp_path / "demo"
    out.mkdir()
    (out / "quicklook.png").write_text("my drawing")
    (out / "sr.tif").mkdir()
    (out / "sr.tif" / "x.txt").write_text("x")
    assert main(["demo", "--output", str(out), "--overwrite", "--samples", "1", "--steps", "1",
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "not an output of xr-opensr" in err
    assert str(out / "sr.tif") in err and str(out / "quicklook.png") in err
    assert (out / "quicklook.png").read_text() == "my drawing" and (out / "sr.tif" / "x.txt").exists()
    assert sorted(p.name for p in out.iterdir()) == ["quicklook.png", "sr.tif"]


@pytest.fixture
def fake_convert(monkeypatch):
    """``convert_checkpoint`` writing the tiny model's folder (a real LDSR-S2 checkpoint is 1 GB)."""
    import xr_opensr.models as models
    from xr_opensr.models import load_model, save_model

    calls = []

    def convert(ckpt, outdir, *, ema=None, overwrite=False):
        calls.append(Path(outdir))
        return save_model(load_model("tiny", device="cpu"), outdir, card="# converted\n", overwrite=overwrite)

    monkeypatch.setattr(models, "convert_checkpoint", convert)
    return calls


def test_convert_overwrite_replaces_only_a_model_folder(fake_convert, tmp_path, capsys):
    ckpt = tmp_path / "fake.ckpt"
    ckpt.write_bytes(b"not read by the fake")
    # a folder of the user's: refused, untouched
    theirs = tmp_path / "project"
    (theirs / "sub").mkdir(parents=True)
    (theirs / "config.json").write_text('{"mine": 1}')
    (theirs / "sub" / "data.txt").write_text("x")
    before = tree(theirs)
    assert main(["convert", str(ckpt), str(theirs), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and str(theirs) in err and "not a model folder written by xr-opensr" in err
    assert "remove it yourself" in err and tree(theirs) == before
    # a model folder with a user's file in it: refused too, naming the file
    model = tmp_path / "ldsr"
    assert main(["convert", str(ckpt), str(model)]) == 0
    assert (model / "config.json").is_file() and (model / "model.safetensors").is_file()
    assert main(["convert", str(ckpt), str(model)]) == 2  # never without --overwrite
    assert "--overwrite" in capsys.readouterr().err
    (model / "notes.txt").write_text("mine")
    assert main(["convert", str(ckpt), str(model), "--overwrite"]) == 2
    assert "notes.txt" in capsys.readouterr().err and (model / "notes.txt").read_text() == "mine"
    # a model folder: its contents are replaced (a stale file of the old model goes with them)
    (model / "notes.txt").unlink()
    (model / "mean_net.safetensors").write_bytes((model / "model.safetensors").read_bytes())
    assert main(["convert", str(ckpt), str(model), "--overwrite"]) == 0
    assert sorted(p.name for p in model.iterdir()) == ["MODEL_CARD.md", "config.json", "model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fake.ckpt", "ldsr", "project"]  # no temporaries
    # a file: refused
    (tmp_path / "file").write_text("x")
    assert main(["convert", str(ckpt), str(tmp_path / "file"), "--overwrite"]) == 2
    assert (tmp_path / "file").read_text() == "x"


# --------------------------------------------------------------------------- --bands: exactly the bands asked for


@pytest.fixture(scope="module")
def ten_plain(tmp_path_factory) -> tuple[Path, xr.DataArray]:
    cube = make_cube(12, 10, bands=ALL_BANDS)
    return write_geotiff(tmp_path_factory.mktemp("ten") / "ten.tif", cube, descriptions=False), cube


def test_bands_name_the_ten_bands_of_a_plain_geotiff(ten_plain, model20, tmp_path):
    src, cube = ten_plain
    out = tmp_path / "ten_sr.tif"
    assert main(["superresolve", str(src), str(out), "--bands", *ALL_BANDS, "--model20", model20, *FAST]) == 0
    assert_cog(out, count=10, shape=(48, 40), bands=ALL_BANDS)
    assert_cog(_io.uncertainty_path(out), count=10, shape=(48, 40), bands=ALL_BANDS)
    expected = cube.opensr.superresolve(2, bands="all", model20=model20, **SR_KW).compute()
    got = _io.open_result(out)
    np.testing.assert_array_equal(got.sr.values, expected.sr.values)
    np.testing.assert_array_equal(got.uncertainty.values, expected.uncertainty.values)


def test_bands_of_a_plain_geotiff_in_file_order_and_dash_for_a_band_left_out(tmp_path):
    cube = make_cube(12, 10, bands=("B02", "B03", "B04", "SCL", "B08"))
    src = write_geotiff(tmp_path / "bgr.tif", cube, descriptions=False)
    out = tmp_path / "bgr_sr.tif"
    assert main(["superresolve", str(src), str(out), "--bands", "B02", "B03", "B04", "-", "B08", *FAST]) == 0
    assert_cog(out, count=4, shape=(48, 40), bands=("B02", "B03", "B04", "B08"))
    expected = make_cube(12, 10).opensr.superresolve(2, **SR_KW).compute()  # the same four bands, model order
    np.testing.assert_array_equal(_io.open_result(out).sr.values, expected.sr.values[[2, 1, 0, 3]])


@pytest.mark.parametrize(("bands", "message"), [
    ([], "--bands B04 B03 B02 B08 B05 B06 B07 B8A B11 B12 (one name per band of the file, in file order"),
    (["all"], "--bands B04 B03 B02 B08 B05 B06 B07 B8A B11 B12 (one name per band of the file, in file order"),
    (["B04", "B03", "B02", "B08"], "has 10 bands but 4 band names"),
    ([*ALL_BANDS[:9], "B13"], "'B13' is not a band"),
    ([*ALL_BANDS[:9], "SCL"], "SCL cannot be super-resolved"),
    ([*ALL_BANDS[:9], "B04"], "names B04 twice"),
    (["-", *ALL_BANDS[1:]], "lacks B04"),
])
def test_bands_of_a_plain_geotiff_errors_give_the_cli_fix(bands, message, ten_plain, tmp_path, capsys):
    argv = ["superresolve", str(ten_plain[0]), str(tmp_path / "o.tif"), *FAST]
    assert main([*argv, "--bands", *bands] if bands else argv) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert "Traceback" not in err and "bands=[" not in err and "bands='all'" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_bands_pick_bands_of_a_named_input(model20, tmp_path, capsys):
    cube = make_cube(12, 10, bands=ALL_BANDS)
    src = write_geotiff(tmp_path / "named.tif", cube)
    out = tmp_path / "two.tif"
    assert main(["superresolve", str(src), str(out), "--bands", "B04", "B11", "--model20", model20, *FAST]) == 0
    assert_cog(out, count=2, shape=(48, 40), bands=("B04", "B11"))
    expected = cube.opensr.superresolve(2, bands="all", model20=model20, **SR_KW).compute()
    np.testing.assert_array_equal(_io.open_result(out).sr.values, expected.sr.sel(band=["B04", "B11"]).values)
    four = write_geotiff(tmp_path / "four.tif", make_cube(12, 10))
    assert main(["superresolve", str(four), str(tmp_path / "x.tif"), "--bands", "B04", "B11", *FAST]) == 2
    err = capsys.readouterr().err
    assert "has no B11" in err and "B04, B03, B02, B08" in err and "bands=[" not in err


# --------------------------------------------------------------------------- --time


@pytest.fixture(scope="module")
def three_steps(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("t3") / "cube.zarr"  # 2024-06-01, 2024-06-06, 2024-06-11
    make_dataset(12, 10, names=("B04", "B03", "B02", "B08"), extra=(), times=3).to_zarr(src, zarr_format=2)
    return src


@pytest.mark.parametrize("when", ["1999-01-01", "2024-05-31", "2024-06-12", "2030-01-01T00:00Z"])
def test_time_outside_the_cube_exit_2_naming_the_range(when, three_steps, tmp_path, capsys):
    assert main(["superresolve", str(three_steps), str(tmp_path / "o.tif"), "--time", when, *FAST]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"--time {when}" in err
    assert "2024-06-01" in err and "2024-06-11" in err and "outside" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize(("when", "stamp"), [
    ("2024-06-07", "2024-06-06T00:00:00"),  # inside the range: the nearest step, recorded
    ("2024-06-11", "2024-06-11T00:00:00"),
    ("0", "2024-06-01T00:00:00"),
    ("-1", "2024-06-11T00:00:00"),
])
def test_time_step_written_is_a_geotiff_tag(when, stamp, three_steps, tmp_path, capsys):
    out = tmp_path / "t.tif"
    assert main(["superresolve", str(three_steps), str(out), "--time", when, *FAST]) == 0
    assert f"time step {stamp}" in capsys.readouterr().out
    for path in _io.output_paths(out):
        with rasterio.open(path) as f:
            assert f.tags()["time"] == stamp


@pytest.mark.parametrize(("when", "stamp"), [
    ("2024-06-01", "2024-06-01T10:30:00"),  # a date: the step of that day, though it is later than 00:00
    ("2024-06-06", "2024-06-06T10:30:00"),  # not the nearer step of the day before (05T23:00)
    ("2024-06-06T01:00", "2024-06-05T23:00:00"),  # a time: the nearest step
])
def test_time_a_date_takes_the_step_of_that_day(when, stamp, tmp_path, capsys):
    src = tmp_path / "passes.zarr"
    ds = make_dataset(12, 10, names=("B04", "B03", "B02", "B08"), extra=(), times=3)
    ds.assign_coords(time=np.array(["2024-06-01T10:30", "2024-06-05T23:00", "2024-06-06T10:30"],
                                   dtype="datetime64[ns]")).to_zarr(src, zarr_format=2)
    out = tmp_path / "t.tif"
    assert main(["superresolve", str(src), str(out), "--time", when, *FAST]) == 0
    assert f"time step {stamp}" in capsys.readouterr().out
    with rasterio.open(out) as f:
        assert f.tags()["time"] == stamp


def test_write_result_tags_the_time_of_a_scalar_time_coord(tmp_path):
    cube = make_cube(12, 10, times=2).isel(time=1)
    result = cube.opensr.superresolve(2, **SR_KW)
    paths = _io.write_result(result, tmp_path / "r.tif")
    for path in paths:
        with rasterio.open(path) as f:
            assert f.tags()["time"] == str(np.datetime_as_string(cube.time.values, unit="s"))
    np.testing.assert_array_equal(_io.open_result(paths[0]).sr.values, result.sr.values)


def test_several_time_steps_to_a_geotiff_names_the_input_and_the_fix(three_steps, tmp_path, capsys):
    out = tmp_path / "e.tif"
    assert main(["superresolve", str(three_steps), str(out), *FAST]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and str(three_steps) in err and "3 time steps" in err
    assert "--time" in err and ".zarr" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []
