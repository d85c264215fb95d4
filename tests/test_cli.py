"""The ``xr-opensr`` command line: demo, superresolve, search, help, errors, no silent overwrite."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
import xarray as xr
from conftest import ALL_BANDS, make_cube

import xr_opensr.accessor  # noqa: F401  (registers .opensr)
from xr_opensr import _io
from xr_opensr.cli import build_parser, main

FAST = ["--model", "tiny", "--samples", "2", "--steps", "2", "--no-progress"]
SR_KW = {"model": "tiny", "steps": 2}


def write_geotiff(path: Path, cube: xr.DataArray, *, descriptions: bool = True) -> Path:
    cube = cube.copy()
    cube.attrs = {}
    if descriptions:
        cube.attrs["long_name"] = tuple(str(b) for b in cube.band.values)
    cube.rio.write_nodata(0, inplace=True).rio.to_raster(path, tiled=True, blockxsize=16, blockysize=16)
    return path


def assert_cog(path: Path, *, count: int, shape: tuple[int, int], bands=("B04", "B03", "B02", "B08")) -> None:
    with rasterio.open(path) as src:
        assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert src.block_shapes[0] == (256, 256) and src.profile["compress"] == "deflate"  # tiled, compressed
        assert src.count == count and (src.height, src.width) == shape
        assert src.descriptions == bands
        assert src.res == (2.5, 2.5)
        assert src.crs is not None and src.dtypes[0] == "float32"


@pytest.fixture(scope="module")
def geotiff(tmp_path_factory) -> tuple[Path, xr.DataArray]:
    cube = make_cube(24, 20)
    return write_geotiff(tmp_path_factory.mktemp("in") / "s2.tif", cube), cube


@pytest.fixture(scope="module")
def geotiff_expected(geotiff) -> xr.Dataset:
    """The accessor's result on the geotiff's cube with SR_KW (samples 2): what the CLI runs must give."""
    return geotiff[1].opensr.superresolve(2, **SR_KW).compute()


# --------------------------------------------------------------------------- help and parsing


@pytest.mark.parametrize("command", [[], ["demo"], ["superresolve"], ["search"], ["info"], ["convert"]])
def test_cli_help_everywhere(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*command, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: xr-opensr")
    if command in (["demo"], ["superresolve"], ["search"]):
        for option in ("--samples", "--steps", "--seed", "--model", "--device", "--chunks", "--scheduler",
                       "--workers", "--overwrite"):
            assert option in out


def test_cli_console_script_is_registered():
    from importlib.metadata import entry_points

    (script,) = [ep for ep in entry_points(group="console_scripts") if ep.name == "xr-opensr"]
    assert script.value == "xr_opensr.cli:main" and script.load() is main


@pytest.mark.parametrize(("argv", "message"), [
    (["superresolve", "a.tif", "b.tif", "--samples", "-1"], "integer >= 0"),
    (["superresolve", "a.tif", "b.tif", "--seed", "-1"], "integer >= 0"),
    (["superresolve", "a.tif", "b.tif", "--chunks", "big"], "positive int"),
    (["superresolve", "a.tif", "b.tif", "--workers", "2", "--scheduler", "tcp://x:1"], "not allowed with"),
    (["superresolve", "a.tif", "b.tif", "--device", "potato"], "expected auto, cpu, cuda or cuda:N"),
    (["superresolve", "a.tif", "b.tif", "--dtype", "float64"], "invalid choice"),
    (["search", "o.tif", "--bbox", "0", "0", "1", "1", "--datetime", "2024", "--max-cloud", "150"], "[0, 100]"),
    (["search", "o.tif", "--bbox", "1", "2", "3"], "--bbox"),
    (["search", "o.tif", "--bbox", "1", "2", "3", "4"], "--datetime"),
    (["frobnicate"], "invalid choice"),
])
def test_cli_bad_options_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_parser_defaults():
    args = build_parser().parse_args(["superresolve", "in.tif", "out.zarr"])
    assert (args.samples, args.steps, args.seed, args.model, args.device, args.chunks) == (10, None, 0, "default", "auto", 256)
    assert args.scheduler is None and args.workers is None and not args.overwrite
    assert build_parser().parse_args(["demo"]).output == "opensr-demo"


# --------------------------------------------------------------------------- superresolve


def test_cli_superresolve_geotiff_to_cog_equals_the_accessor(geotiff, geotiff_expected, tmp_path, capsys):
    src, _ = geotiff
    out = tmp_path / "sr.tif"
    assert main(["superresolve", str(src), str(out), "--chunks", "16", *FAST]) == 0
    printed = capsys.readouterr()
    assert "model: tiny" in printed.out and "wall time" in printed.out and "wrote" in printed.out
    assert "NOT a meaningful" in printed.err  # tiny has random weights: said on screen
    unc_path = tmp_path / "sr_uncertainty.tif"
    assert_cog(out, count=4, shape=(96, 80))
    assert_cog(unc_path, count=4, shape=(96, 80))
    with rasterio.open(out) as f:
        assert f.tags()["model"] == "tiny" and f.tags()["samples"] == "2"
        assert f.crs.to_epsg() == 32633 and f.transform.c == 500_000.0 and f.transform.f == 5_000_000.0
    expected = geotiff_expected
    got = _io.open_result(out)
    np.testing.assert_array_equal(got.sr.values, expected.sr.values)
    np.testing.assert_array_equal(got.uncertainty.values, expected.uncertainty.values)
    np.testing.assert_array_equal(got.x.values, expected.x.values)


def test_cli_superresolve_zarr_to_zarr_with_time(tmp_path, dataset_factory):
    ds = dataset_factory(12, 10, names=("B04", "B03", "B02", "B08"), extra=(), times=2)
    src = tmp_path / "cube.zarr"
    ds.to_zarr(src, zarr_format=2, consolidated=True)
    out = tmp_path / "out.zarr"
    assert main(["superresolve", str(src), str(out), *FAST]) == 0
    got = xr.open_zarr(out, decode_coords="all")
    assert got.sr.dims == ("time", "band", "y", "x") and got.sr.shape == (2, 4, 48, 40)
    assert got.rio.crs.to_epsg() == 32633
    expected = ds.opensr.superresolve(2, **SR_KW).compute()
    np.testing.assert_array_equal(got.sr.values, expected.sr.values)
    # one time step of it into a GeoTIFF, chosen with --time
    assert main(["superresolve", str(src), str(tmp_path / "t1.tif"), "--time", "1", *FAST]) == 0
    one = _io.open_result(tmp_path / "t1.tif")
    np.testing.assert_array_equal(one.sr.values, expected.sr.isel(time=1).values)


@pytest.fixture(scope="module")
def time_zarr(tmp_path_factory):
    from conftest import make_dataset

    src = tmp_path_factory.mktemp("tz") / "cube.zarr"
    make_dataset(12, 10, names=("B04", "B03", "B02", "B08"), extra=(), times=2).to_zarr(src, zarr_format=2)
    return src


@pytest.mark.parametrize(("when", "message"), [
    ("99", "has 2 time step(s); give a position in 0..1"),
    ("-3", "has 2 time step(s)"),
    ("garbage", "'garbage' is not a time step of"),
])
def test_cli_bad_time_exit_2(when, message, time_zarr, tmp_path, capsys):
    assert main(["superresolve", str(time_zarr), str(tmp_path / "o.zarr"), "--time", when, *FAST]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "o.zarr").exists()


def test_cli_time_on_a_single_scene_exit_2(geotiff, tmp_path, capsys):
    assert main(["superresolve", str(geotiff[0]), str(tmp_path / "o.tif"), "--time", "0", *FAST]) == 2
    assert "has no time dimension (one scene); drop --time" in capsys.readouterr().err


def test_cli_dtype_uint16_half_the_bytes_lossless_to_1e4(geotiff, geotiff_expected, tmp_path):
    src, _ = geotiff
    out = tmp_path / "dn.tif"
    assert main(["superresolve", str(src), str(out), "--dtype", "uint16", *FAST]) == 0
    for path in (out, tmp_path / "dn_uncertainty.tif"):
        with rasterio.open(path) as f:
            assert f.dtypes == ("uint16",) * 4 and f.nodata == 0 and f.scales == (1e-4,) * 4
    expected = geotiff_expected
    got = _io.open_result(out)
    for name in ("sr", "uncertainty"):
        assert np.abs(got[name].values - expected[name].values).max() <= 1e-4 + 1e-7


def test_cli_superresolve_names_bands_of_plain_geotiffs(tmp_path, capsys):
    cube = make_cube(12, 10)
    src = write_geotiff(tmp_path / "plain.tif", cube, descriptions=False)
    out = tmp_path / "named.tif"
    assert main(["superresolve", str(src), str(out), "--bands", "B04", "B03", "B02", "B08", *FAST]) == 0
    assert_cog(out, count=4, shape=(48, 40))
    assert main(["superresolve", str(src), str(tmp_path / "x.tif"), "--bands", "B04", "B03", *FAST]) == 2
    assert "has 4 bands but 2 band names" in capsys.readouterr().err


def test_cli_superresolve_bands_all_to_cog_equals_the_accessor(tmp_path, model20, capsys):
    cube = make_cube(20, 18, bands=ALL_BANDS)
    src = write_geotiff(tmp_path / "ten.tif", cube)
    out = tmp_path / "ten_sr.tif"
    assert main(["superresolve", str(src), str(out), "--bands", "all", "--model20", model20, *FAST]) == 0
    assert "20 m bands: model s2-20m" in capsys.readouterr().out
    assert_cog(out, count=10, shape=(80, 72), bands=ALL_BANDS)
    assert_cog(tmp_path / "ten_sr_uncertainty.tif", count=10, shape=(80, 72), bands=ALL_BANDS)
    expected = cube.opensr.superresolve(2, bands="all", model20=model20, **SR_KW).compute()
    got = _io.open_result(out)
    np.testing.assert_array_equal(got.sr.values, expected.sr.values)
    np.testing.assert_array_equal(got.uncertainty.values, expected.uncertainty.values)
    # the 20 m bands need the 10 m ones: exit 2 with the fix
    src5 = write_geotiff(tmp_path / "five.tif", make_cube(20, 18, bands=("B11", "B04", "B03", "B02", "X")))
    assert main(["superresolve", str(src5), str(tmp_path / "five_sr.tif"), "--bands", "all", *FAST]) == 2
    assert "lacks B08 (B8/nir)" in capsys.readouterr().err


def test_cli_progress_bar_on_stderr(geotiff, tmp_path, capsys):
    src, _ = geotiff
    args = ["superresolve", str(src), str(tmp_path / "p.tif"), "--model", "tiny", "--samples", "1", "--steps", "1"]
    assert main(args) == 0
    assert "% Completed" in capsys.readouterr().err


@pytest.fixture(scope="module")
def threaded_cluster():
    """An in-process cluster (fast to start); the batch-job test uses worker processes."""
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(processes=False, n_workers=2, threads_per_worker=1,
                                  dashboard_address=":0") as cluster:
        yield cluster


@pytest.mark.distributed
def test_cli_superresolve_on_an_existing_cluster(threaded_cluster, geotiff, geotiff_expected, tmp_path, capsys):
    src, _ = geotiff
    out = tmp_path / "cluster.tif"
    argv = ["superresolve", str(src), str(out), "--scheduler", threaded_cluster.scheduler_address,
            "--chunks", "16", "--model", "tiny", "--samples", "2", "--steps", "2"]
    assert main(argv) == 0
    printed = capsys.readouterr()
    assert f"dask cluster: {threaded_cluster.scheduler_address}, 2 workers" in printed.out
    expected = geotiff_expected
    np.testing.assert_array_equal(_io.open_result(out).sr.values, expected.sr.values)
    store = tmp_path / "cluster.zarr"
    assert main(["superresolve", str(src), str(store), "--scheduler", threaded_cluster.scheduler_address,
                 *FAST]) == 0
    np.testing.assert_array_equal(xr.open_zarr(store).sr.values, expected.sr.values)


@pytest.mark.distributed
def test_cli_workers_starts_a_local_cluster(geotiff, tmp_path, monkeypatch, capsys):
    distributed = pytest.importorskip("distributed")
    made = []
    real = distributed.LocalCluster

    def in_process(**kwargs):  # same options, but threads: no worker processes to start in a unit test
        made.append(dict(kwargs))
        return real(**{**kwargs, "processes": False})

    monkeypatch.setattr(distributed, "LocalCluster", in_process)
    assert main(["superresolve", str(geotiff[0]), str(tmp_path / "w.tif"), "--workers", "3", *FAST]) == 0
    assert made == [{"n_workers": 3, "threads_per_worker": 1, "processes": True, "dashboard_address": ":0"}]
    assert ", 3 workers" in capsys.readouterr().out


@pytest.mark.distributed
def test_cli_gpu_workers_falls_back_to_cpu_workers_with_the_same_result(geotiff, geotiff_expected, tmp_path, capsys):
    pytest.importorskip("distributed")
    import torch

    if torch.cuda.is_available():
        pytest.skip("this checks the CPU fallback; with a GPU --gpu-workers starts dask_cuda (tests/test_gpu.py)")
    src, _ = geotiff
    out = tmp_path / "g.tif"
    assert main(["superresolve", str(src), str(out), "--gpu-workers", "--chunks", "48", *FAST]) == 0
    assert "dask cluster:" in capsys.readouterr().out
    expected = geotiff_expected
    np.testing.assert_array_equal(_io.open_result(out).sr.values, expected.sr.values)


def test_cli_precision_and_threads_reach_the_kernel(geotiff, geotiff_expected, tmp_path, capsys):
    src, _ = geotiff
    out = tmp_path / "p.tif"
    assert main(["superresolve", str(src), str(out), "--precision", "bfloat16", "--threads", "2", *FAST]) == 0
    got = _io.open_result(out).sr.values
    fp32 = geotiff_expected.sr.values
    assert np.isfinite(got).all() and not np.array_equal(got, fp32)  # bf16 arithmetic really ran
    np.testing.assert_allclose(got, fp32, atol=0.05)
    assert main(["superresolve", str(src), str(tmp_path / "h.tif"), "--precision", "float16", *FAST]) == 2
    assert "float16" in capsys.readouterr().err


def test_cli_unreachable_scheduler_exit_2(geotiff, tmp_path, monkeypatch, capsys):
    distributed = pytest.importorskip("distributed")

    def refuse(address, **kwargs):
        raise OSError(f"Timed out trying to connect to {address}")

    monkeypatch.setattr(distributed, "Client", refuse)
    argv = ["superresolve", str(geotiff[0]), str(tmp_path / "u.tif"), "--scheduler", "tcp://127.0.0.1:9", *FAST]
    assert main(argv) == 2
    assert "cannot connect to a dask scheduler at 'tcp://127.0.0.1:9'" in capsys.readouterr().err
    assert not (tmp_path / "u.tif").exists()


# --------------------------------------------------------------------------- errors and overwrite


@pytest.mark.parametrize(("make_args", "message"), [
    (lambda t, g: ["superresolve", str(t / "missing.tif"), str(t / "o.tif")], "input not found"),
    (lambda t, g: ["superresolve", str(g), str(t / "o.png")], "end it in .tif"),
    (lambda t, g: ["superresolve", str(g), str(t / "no" / "such" / "o.tif")], "mkdir -p"),
    (lambda t, g: ["superresolve", str(t / "notes.tif"), str(t / "o.tif")], "cannot read"),
    (lambda t, g: ["superresolve", str(t), str(t / "o.tif")], "not a Zarr store"),
    (lambda t, g: ["superresolve", str(g), str(t / "o.tif"), "--model", "nonsense"], "unknown model name"),
    (lambda t, g: ["search", str(t / "o.tif"), "--bbox", "10", "0", "5", "1", "--datetime", "2024"], "WEST SOUTH EAST NORTH"),
    (lambda t, g: ["search", str(t / "o.tif"), "--bbox", "0", "0", "1", "1", "--datetime", "June"], "not an ISO date"),
    (lambda t, g: ["search", str(t / "o.tif"), "--bbox", "0", "0", "1", "1", "--datetime", "2024", "--all"], ".zarr"),
    (lambda t, g: ["demo", "--output", str(g)], "is a file"),
])
def test_cli_bad_paths_exit_2_with_the_fix(make_args, message, geotiff, tmp_path, capsys):
    (tmp_path / "notes.tif").write_text("not a raster")
    assert main(make_args(tmp_path, geotiff[0])) == 2
    err = capsys.readouterr().err
    assert err.startswith("xr-opensr ") and "error:" in err and message in err
    assert not (tmp_path / "o.tif").exists()


def test_cli_never_overwrites_without_flag(geotiff, tmp_path, capsys):
    src, _ = geotiff
    out = tmp_path / "mine.tif"
    out.write_bytes(b"the user's precious file")
    before = out.stat()
    assert main(["superresolve", str(src), str(out), *FAST]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert out.read_bytes() == b"the user's precious file" and out.stat().st_mtime_ns == before.st_mtime_ns
    assert not (tmp_path / "mine_uncertainty.tif").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.tif"]  # no temporary files left
    # the uncertainty file alone also protects the pair
    other = tmp_path / "b.tif"
    (tmp_path / "b_uncertainty.tif").write_bytes(b"keep")
    assert main(["superresolve", str(src), str(other), *FAST]) == 2
    assert not other.exists() and (tmp_path / "b_uncertainty.tif").read_bytes() == b"keep"
    # a Zarr folder too
    store = tmp_path / "mine.zarr"
    store.mkdir()
    (store / "keep.txt").write_text("x")
    assert main(["superresolve", str(src), str(store), *FAST]) == 2
    assert sorted(p.name for p in store.iterdir()) == ["keep.txt"]
    # nor with --overwrite: they are not outputs of xr-opensr (tests/test_cli_safety.py has the cases)
    assert main(["superresolve", str(src), str(out), "--overwrite", *FAST]) == 2
    assert "is not an output of xr-opensr" in capsys.readouterr().err
    assert out.read_bytes() == b"the user's precious file"
    assert main(["superresolve", str(src), str(store), "--overwrite", *FAST]) == 2
    assert sorted(p.name for p in store.iterdir()) == ["keep.txt"]
    # outputs of xr-opensr are replaced with --overwrite
    out.unlink()
    shutil.rmtree(store)
    for path in (out, store):
        assert main(["superresolve", str(src), str(path), *FAST, "--seed", "3"]) == 0
        assert main(["superresolve", str(src), str(path), "--overwrite", *FAST]) == 0
    assert_cog(out, count=4, shape=(96, 80))
    assert "sr" in xr.open_zarr(store)


def test_cli_info(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "tiny" in out and "device:" in out


# --------------------------------------------------------------------------- demo


def test_cli_demo_writes_cogs_and_quicklook(tmp_path, monkeypatch, capsys):
    from xr_opensr import testing
    from xr_opensr.models import registered_models

    monkeypatch.chdir(tmp_path)  # the default output folder is ./opensr-demo/
    argv = ["demo", "--samples", "2", "--steps", "1", "--no-progress"]
    assert main(argv) == 0
    out = tmp_path / "opensr-demo"
    printed = capsys.readouterr()
    assert "model:" in printed.out and "wall time" in printed.out and "no network" in printed.out
    if "default" not in registered_models():
        assert "UNTRAINED" in printed.err and "NOT a meaningful" in printed.err
    assert sorted(p.name for p in out.iterdir()) == ["quicklook.png", "sr.tif", "uncertainty.tif"]
    lr = testing.demo_cube()
    shape = (4 * lr.sizes["y"], 4 * lr.sizes["x"])
    assert_cog(out / "sr.tif", count=4, shape=shape)
    assert_cog(out / "uncertainty.tif", count=4, shape=shape)
    with rasterio.open(out / "sr.tif") as src:
        assert src.overviews(1)  # cheap at this size: one level
    assert (out / "quicklook.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a second run without --overwrite leaves everything as it was
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert main(argv) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps
    # with --overwrite its own outputs (the COGs' run tag, the quicklook's PNG title) are replaced
    assert main([*argv, "--overwrite"]) == 0
    assert all(p.stat().st_mtime_ns != stamps[p.name] for p in out.iterdir())


# --------------------------------------------------------------------------- search (local STAC API)


@pytest.mark.stac
def test_cli_search_stac_least_cloudy_scene_to_cog(stac_api, tmp_path, capsys):
    from stac_server import SCENES

    bbox = SCENES["S2A_32TMR_20240610_0_L2A"].lonlat_bbox(inset=50)
    out = tmp_path / "search.tif"
    argv = ["search", str(out), "--bbox", *map(str, bbox), "--datetime", "2024-06-01/2024-06-30",
            "--url", stac_api.url, "--max-cloud", "100", *FAST]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "S2B_32TMR_20240620_0_L2A" in printed  # found, but cloudy
    assert "using the least cloudy: S2A_32TMR_20240610_0_L2A" in printed
    with rasterio.open(out) as f:
        assert f.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG" and f.crs.to_epsg() == 32632 and f.count == 4
    # nothing found -> exit 2 and a hint, no file
    argv_none = ["search", str(tmp_path / "none.tif"), "--bbox", *map(str, bbox), "--datetime",
                 "2019-01-01/2019-01-31", "--url", stac_api.url, *FAST]
    assert main(argv_none) == 2
    assert "widen the datetime" in capsys.readouterr().err
    assert not (tmp_path / "none.tif").exists()


@pytest.mark.stac
def test_cli_search_stac_all_scenes_to_zarr(stac_api, tmp_path):
    from stac_server import SCENES

    bbox = SCENES["S2A_32TMR_20240610_0_L2A"].lonlat_bbox(inset=50)
    out = tmp_path / "all.zarr"
    argv = ["search", str(out), "--bbox", *map(str, bbox), "--datetime", "2024-06-01/2024-06-30", "--all",
            "--url", stac_api.url, "--max-cloud", "100", *FAST]
    assert main(argv) == 0
    got = xr.open_zarr(out, decode_coords="all")
    assert got.sizes["time"] == 2 and got.sr.dims == ("time", "band", "y", "x")


@pytest.mark.stac
def test_cli_search_stac_all_bands(stac_api, tmp_path, model20):
    from stac_server import SCENES

    bbox = SCENES["S2A_32TMR_20240610_0_L2A"].lonlat_bbox(inset=50)
    out = tmp_path / "ten.zarr"
    argv = ["search", str(out), "--bbox", *map(str, bbox), "--datetime", "2024-06-10", "--bands", "all",
            "--model20", model20, "--url", stac_api.url, "--max-cloud", "10", *FAST]
    assert main(argv) == 0
    got = xr.open_zarr(out, decode_coords="all")
    assert list(got.band.values) == list(ALL_BANDS) and got.attrs["model20"] == "s2-20m"
    assert np.isfinite(got.sr.sel(band="B12").values).mean() > 0.5


def test_cli_stac_url_default_follows_the_environment(monkeypatch):
    monkeypatch.setenv("XR_OPENSR_STAC_URL", "http://127.0.0.1:9/stac")
    args = build_parser().parse_args(["search", "o.tif", "--bbox", "0", "0", "1", "1", "--datetime", "2024"])
    assert args.url == "http://127.0.0.1:9/stac"
    monkeypatch.delenv("XR_OPENSR_STAC_URL")
    args = build_parser().parse_args(["search", "o.tif", "--bbox", "0", "0", "1", "1", "--datetime", "2024"])
    assert args.url.startswith("https://earth-search")
