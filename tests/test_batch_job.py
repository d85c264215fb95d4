"""``examples/batch_job.py`` against the local STAC API on a LocalCluster: one Zarr store, resumable."""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from xr_opensr.errors import InputError

pytestmark = [pytest.mark.distributed, pytest.mark.stac]

ROOT = Path(__file__).resolve().parents[1]
SCENE_A = "S2A_32TMR_20240610_0_L2A"  # clear
SCENE_CLOUDY = "S2B_32TMR_20240620_0_L2A"  # same footprint, 10 days later, 87 % cloud


def load_batch_job():
    spec = importlib.util.spec_from_file_location("batch_job", ROOT / "examples" / "batch_job.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["batch_job"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def cluster():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(processes=True, n_workers=2, threads_per_worker=1,
                                  dashboard_address=":0") as local:
        yield local


def test_batch_job_stac_one_store_and_resume_after_interruption(stac_api, cluster, tmp_path, caplog):
    import zarr
    from stac_server import SCENES

    bj = load_batch_job()
    store = tmp_path / "scenes.zarr"
    bbox = SCENES[SCENE_A].lonlat_bbox(inset=50)
    argv = ["--bbox", *map(str, bbox), "--datetime", "2024-06-01/2024-06-30", "--url", stac_api.url,
            "--out", str(store), "--scheduler", cluster.scheduler_address, "--model", "tiny", "--steps", "2",
            "--samples", "2", "--no-progress"]
    caplog.set_level(logging.INFO, logger="xr_opensr.batch")

    # an interrupted job: only one scene got done
    first = bj.main([*argv, "--max-scenes", "1"])
    assert first.found == [SCENE_A, SCENE_CLOUDY]
    assert first.processed == [SCENE_A] and first.remaining == [SCENE_CLOUDY] and first.skipped == []
    assert bj.completed_scenes(store) == [SCENE_A]

    # the re-run does only the missing scene
    second = bj.main(argv)
    assert second.processed == [SCENE_CLOUDY] and second.skipped == [SCENE_A]
    assert "2 scene(s) found, 1 already complete, 1 to process now" in caplog.text
    assert bj.main(argv).processed == []

    # one store, one group per scene, (time, band, y, x) at 2.5 m in the scene's UTM zone
    for sid in (SCENE_A, SCENE_CLOUDY):
        ds = xr.open_zarr(store, group=sid, decode_coords="all")
        assert ds.sr.dims == ("time", "band", "y", "x") and ds.sizes["time"] == 1
        assert ds.attrs["scene_id"] == sid and ds.attrs["xr_opensr_complete"]
        assert abs(float(ds.x[1] - ds.x[0])) == 2.5 and ds.rio.crs.to_epsg() == 32632
    clear = xr.open_zarr(store, group=SCENE_A).sr.values
    assert np.isfinite(clear).mean() > 0.5
    assert (store / ".zmetadata").is_file()  # consolidated for readers

    # simulate a crash while writing scene A: its data and completion marker are gone
    root = zarr.open_group(str(store), mode="a", use_consolidated=False)
    root.attrs["completed_scenes"] = [s for s in root.attrs["completed_scenes"] if s != SCENE_A]
    shutil.rmtree(store / SCENE_A)
    third = bj.main(argv)
    assert third.processed == [SCENE_A] and third.skipped == [SCENE_CLOUDY]
    np.testing.assert_array_equal(xr.open_zarr(store, group=SCENE_A).sr.values, clear)  # same seeds, same data

    # data written but the marker not yet: the scene is redone, not trusted
    del zarr.open_group(str(store / SCENE_CLOUDY), mode="a").attrs["xr_opensr_complete"]
    assert bj.main(argv).processed == [SCENE_CLOUDY]

    # other settings on the same store are refused (no silent mixing), with exit status 2
    other = [("3" if a == "2" and argv[i - 1] == "--samples" else a) for i, a in enumerate(argv)]
    assert bj.main(other) == 2

    # --overwrite that does not finish every scene leaves the old store exactly as it was
    before = {p.relative_to(store): p.read_bytes() for p in store.rglob("*") if p.is_file()}
    partial = bj.main([*other, "--overwrite", "--max-scenes", "1"])
    assert partial.processed == [SCENE_A] and partial.remaining == [SCENE_CLOUDY]
    assert {p.relative_to(store): p.read_bytes() for p in store.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scenes.zarr"]  # the new store beside it is gone


def test_batch_job_help_and_bad_store(tmp_path, capsys):
    bj = load_batch_job()
    with pytest.raises(SystemExit) as exit_:
        bj.main(["--help"])
    assert exit_.value.code == 0 and "--scheduler" in capsys.readouterr().out
    assert bj.main(["--bbox", "1", "0", "0", "1", "--datetime", "2024", "--out", str(tmp_path / "x.zarr")]) == 2
    assert "WEST SOUTH EAST NORTH" in capsys.readouterr().err


def test_batch_job_second_job_on_the_same_store_is_refused(tmp_path):
    import subprocess

    from xr_opensr.errors import OutputError

    bj = load_batch_job()
    store = tmp_path / "s.zarr"
    code = ("import time; from pathlib import Path; from xr_opensr import _atomic\n"
            f"with _atomic.locked([Path({str(store)!r})]):\n    print('held', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputError, match=f"another run is writing {store}"):
            bj.run(out=store, bbox=(0, 0, 1, 1), datetime="2024", client=None, url="http://127.0.0.1:9")
    finally:
        holder.kill()
        holder.wait()
    assert not store.exists()


@pytest.mark.parametrize("overwrite", [False, True])
def test_batch_job_never_writes_into_nor_deletes_a_users_folder(tmp_path, overwrite):
    """A user's folder named like the store (not a store this library wrote) is refused before any work,
    with or without --overwrite, and left as it was (issue 19: the CLI deletes only what it wrote)."""
    bj = load_batch_job()
    store = tmp_path / "x.zarr"
    (store / "sub").mkdir(parents=True)
    (store / "sub" / "data.txt").write_text("mine")
    with pytest.raises(InputError, match="x.zarr"):
        bj.run(out=store, bbox=(0, 0, 1, 1), datetime="2024", client=None, url="http://127.0.0.1:9",
               overwrite=overwrite)
    assert (store / "sub" / "data.txt").read_text() == "mine" and sorted(p.name for p in store.iterdir()) == ["sub"]
