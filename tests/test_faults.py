"""Fault injection: kills, full disks, file-size limits, concurrent writers, read-only targets, corrupt inputs.

Every run is a real process running the ``xr-opensr`` command line on real files: forked from a
server process that imported the library once (importing torch costs ~8 s here, a run ~2 s), or a
fresh ``python -m xr_opensr.cli`` where a test needs it. Kills land at exact stages through the
``XR_OPENSR_TEST_FAULT`` hook of ``xr_opensr._atomic`` (the process signals itself);
full disks are small tmpfs mounts (root only; the file-size-limit test runs anywhere). Each test
asserts the exit code, the message, and that what is under the final names is either the old output
or the complete new one: never corrupt, never a mix of two runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.shutil
from conftest import make_cube

from xr_opensr import _atomic, _io
from xr_opensr.errors import InputError, OutputError

FAST = ["--model", "tiny", "--samples", "2", "--steps", "2", "--no-progress", "--chunks", "16"]
ROOT = Path(__file__).resolve().parents[1]
COG_STAGES = ["streaming", "streamed", "copied", "verified", "journal", "renaming", "renamed"]
ZARR_STAGES = ["streaming", "streamed", "verified", "journal", "renamed"]
COMMITTED = {"journal", "renaming", "renamed"}  # stages after the commit point


_SERVER = r"""
import json, os, resource, signal, sys, traceback
import rasterio, torch, xr_opensr.models  # the slow imports, once
from xr_opensr.cli import main
# Ctrl-C raises KeyboardInterrupt even when the server was started with SIGINT ignored (a background
# job of a non-interactive shell inherits SIG_IGN, and Python then installs no handler)
signal.signal(signal.SIGINT, signal.default_int_handler)
for line in sys.stdin:
    req = json.loads(line)
    sys.stdout.flush(); sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.environ.pop("XR_OPENSR_TEST_FAULT", None)
            os.environ.update(req["env"])
            if req["fsize"]:
                resource.setrlimit(resource.RLIMIT_FSIZE, (req["fsize"], req["fsize"]))
            for fd, name in ((1, "out"), (2, "err")):
                os.dup2(os.open(req[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
            code = main(req["argv"])
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush(); sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    print(json.dumps(os.waitstatus_to_exitcode(status)), flush=True)
"""


class Runner:
    """Runs the CLI in forked children of a process that imported everything once."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.count = folder, 0
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen([sys.executable, "-c", _SERVER], env=env, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)

    def __call__(self, *argv: str, fault: str | None = None, fsize: int = 0) -> subprocess.CompletedProcess:
        self.count += 1
        out, err = self.folder / f"{self.count}.out", self.folder / f"{self.count}.err"
        req = {"argv": list(argv), "env": {"XR_OPENSR_TEST_FAULT": fault} if fault else {}, "fsize": fsize,
               "out": str(out), "err": str(err)}
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, "the CLI server died"
        return subprocess.CompletedProcess(argv, json.loads(line), out.read_text(), err.read_text())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    runner = Runner(tmp_path_factory.mktemp("cli-logs"))
    yield runner
    runner.close()


def fresh_cli(*args: str, env: dict | None = None, **popen) -> subprocess.CompletedProcess:
    """``python -m xr_opensr.cli`` in a new interpreter."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    env.pop("XR_OPENSR_TEST_FAULT", None)
    return subprocess.run([sys.executable, "-m", "xr_opensr.cli", *args], env=env, capture_output=True, text=True,
                          timeout=180, **popen)


def digest(paths) -> dict[str, str]:
    out = {}
    for p in paths:
        p = Path(p)
        files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
        h = hashlib.sha256()
        for f in files:
            h.update(str(f.relative_to(p) if p.is_dir() else f.name).encode() + f.read_bytes())
        out[p.name] = h.hexdigest()
    return out


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, cli):
    """A GeoTIFF and a Zarr input (24 x 20 LR px), plus an 'old' output of each made with another seed."""
    folder = tmp_path_factory.mktemp("inputs")
    cube = make_cube(24, 20)
    cube.attrs = {"long_name": tuple(str(b) for b in cube.band.values)}
    tif = folder / "s2.tif"
    cube.rio.write_nodata(0).rio.to_raster(tif, tiled=True, blockxsize=16, blockysize=16)
    store = folder / "s2.zarr"
    cube.to_dataset(dim="band").to_zarr(store, zarr_format=2, consolidated=True)
    old_cog, old_zarr, new_cog = folder / "old.tif", folder / "old.zarr", folder / "new.tif"
    assert cli("superresolve", str(tif), str(old_cog), *FAST, "--seed", "7").returncode == 0
    assert cli("superresolve", str(tif), str(old_zarr), *FAST, "--seed", "7").returncode == 0
    assert cli("superresolve", str(tif), str(new_cog), *FAST).returncode == 0
    return {"tif": tif, "zarr": store, "old_cog": old_cog, "old_zarr": old_zarr, "new_cog": new_cog,
            "new": _io.open_result(new_cog).load(), "old": _io.open_result(old_cog).load()}


def place_old(inputs, folder: Path, kind: str) -> Path:
    """Copy the old output into ``folder`` as ``out.tif`` (+ uncertainty) or ``out.zarr``."""
    if kind == "cog":
        shutil.copy(inputs["old_cog"], folder / "out.tif")
        shutil.copy(_io.uncertainty_path(inputs["old_cog"]), folder / "out_uncertainty.tif")
        return folder / "out.tif"
    shutil.copytree(inputs["old_zarr"], folder / "out.zarr")
    return folder / "out.zarr"


def assert_old_or_new(inputs, out: Path) -> str:
    """``out`` reads back completely as one run's result: "old" (bit for bit) or "new"; returns which.

    ``open_result`` refuses a COG pair of two runs and an unfinished publication; results are a
    function of (data, model, seed), so a complete new output equals the reference run's bit for bit.
    """
    got = _io.open_result(out).load()
    same = {name: all(np.array_equal(got[v].values, inputs[name][v].values, equal_nan=True)
                      for v in ("sr", "uncertainty")) for name in ("old", "new")}
    assert same["old"] or same["new"], f"{out} is neither the old output nor the new run's result"
    return "old" if same["old"] else "new"


def assert_files_read(paths) -> None:
    """Every file under a final name reads fully (a raw reader, not our checks)."""
    for p in paths:
        if p.suffix == ".tif" and p.exists():
            with rasterio.open(p) as src:
                src.read()


# --------------------------------------------------------------------------- kills at each stage

# (kind, signal): the stages to kill at, and those after which the next CLI run is checked too
KILLS = {
    ("cog", "SIGKILL"): (COG_STAGES, {"streamed", "renaming"}),
    ("cog", "SIGINT"): (["streaming", "verified", "renaming"], set()),
    ("zarr", "SIGKILL"): (ZARR_STAGES, {"streamed", "journal"}),
    ("zarr", "SIGINT"): (["streaming", "verified", "journal"], set()),
}


@pytest.mark.parametrize(("kind", "sig"), list(KILLS))
def test_kill_at_each_stage_never_publishes_a_partial_or_mixed_output(kind, sig, cli, inputs, tmp_path):
    stages, rerun = KILLS[kind, sig]
    for stage in stages:
        folder = tmp_path / stage
        folder.mkdir()
        out = place_old(inputs, folder, kind)
        finals = _io.output_paths(out)
        old_digest = digest(finals)
        proc = cli("superresolve", str(inputs["tif"]), str(out), "--overwrite", *FAST, fault=f"{stage}:{sig}")
        assert proc.returncode == (-9 if sig == "SIGKILL" else 130), (stage, proc.stderr[-2000:])
        assert "Traceback" not in proc.stderr
        assert_files_read(finals)
        committed = stage in COMMITTED
        if sig == "SIGINT":  # cleaned up at once: the old output, or (committed) the complete new one
            assert "interrupted" in proc.stderr and hidden(folder) == [], (stage, hidden(folder))
            assert assert_old_or_new(inputs, out) == ("new" if committed else "old"), stage
            if not committed:
                assert digest(finals) == old_digest
            continue
        if committed:  # an unfinished publication: readers refuse it, naming the fix
            with pytest.raises(OutputError, match="was interrupted.*run the same command again"):
                _io.open_result(out)
        else:  # not committed: the old output, bit for bit
            assert digest(finals) == old_digest and assert_old_or_new(inputs, out) == "old"
        assert hidden(folder), "a SIGKILL leaves the dead run's temporaries"
        if stage in rerun:  # the next run to that path finishes the publication and removes the temporaries
            again = cli("superresolve", str(inputs["tif"]), str(out), *FAST)
            assert again.returncode == 2 and "already exists" in again.stderr
        else:
            _io.finish(out)
        assert hidden(folder) == [], (stage, hidden(folder))
        assert assert_old_or_new(inputs, out) == ("new" if committed else "old"), stage


def test_sigkill_while_computing_then_rerun_cleans_up(cli, inputs, tmp_path):
    """A kill from outside while blocks are being written (not at a hook): temporaries only, then cleaned."""
    out = tmp_path / "out.tif"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("XR_OPENSR_TEST_FAULT", None)
    proc = subprocess.Popen([sys.executable, "-m", "xr_opensr.cli", "superresolve", str(inputs["tif"]), str(out),
                             *FAST], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not any(".xr-opensr-stream-" in n for n in hidden(tmp_path)) and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.kill()
    proc.wait()
    assert not out.exists() and not _io.uncertainty_path(out).exists()
    assert any(".xr-opensr-" in n for n in hidden(tmp_path))
    assert cli("superresolve", str(inputs["tif"]), str(out), *FAST).returncode == 0
    assert hidden(tmp_path) == [] and assert_old_or_new(inputs, out) == "new"


def test_legacy_temporaries_of_dead_runs_are_removed(cli, inputs, tmp_path):
    out = tmp_path / "out.zarr"
    stale = [tmp_path / ".out.zarr.partial-0123abcd", tmp_path / ".out.zarr.xr-opensr-zarr-deadbeef0000"]
    for p in stale:
        p.mkdir()
    (tmp_path / ".out.zarr.notes").write_text("not ours: left alone")
    proc = cli("superresolve", str(inputs["tif"]), str(out), *FAST)
    assert proc.returncode == 0 and "left by an interrupted run" in proc.stderr
    assert hidden(tmp_path) == [".out.zarr.notes"]


# --------------------------------------------------------------------------- Ctrl-C once the outputs are published


def _program(*argv: str, fault: str | None = None) -> subprocess.Popen:
    """``python -m xr_opensr.cli`` (the program: it ends its process itself) with SIGINT as a terminal
    delivers it, also when the tests run as a background job (SIGINT ignored)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("XR_OPENSR_TEST_FAULT", None)
    env.update({"XR_OPENSR_TEST_FAULT": fault} if fault else {})
    return subprocess.Popen([sys.executable, "-m", "xr_opensr.cli", *argv], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def test_sigint_after_the_outputs_are_published_exits_130(inputs, tmp_path):
    out = tmp_path / "late.tif"
    proc = _program("superresolve", str(inputs["tif"]), str(out), *FAST, fault="exiting:SIGINT")
    stdout, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr and "interrupted" in stderr and f"wrote {out}" in stdout
    assert assert_old_or_new(inputs, out) == "new" and hidden(tmp_path) == []  # published, complete, it stays


def test_sigint_while_the_program_ends_is_never_a_death_by_signal(inputs, tmp_path):
    """Ctrl-C again and again from the moment the outputs are reported until the process has ended: exit 130
    (or 0 when it was gone first), never killed by the signal (-2: the interpreter's teardown had restored
    the default action and took seconds)."""
    out = tmp_path / "end.tif"
    proc = _program("superresolve", str(inputs["tif"]), str(out), *FAST)
    for line in proc.stdout:
        if line.startswith("wall time"):
            break
    while proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        time.sleep(0.02)
    stderr = proc.stderr.read()
    assert proc.returncode in (0, 130), (proc.returncode, stderr[-2000:])
    assert "Traceback" not in stderr
    assert assert_old_or_new(inputs, out) == "new" and hidden(tmp_path) == []


# --------------------------------------------------------------------------- full disk and file-size limit


@contextlib.contextmanager
def small_disk(folder: Path, size_kb: int):
    if os.geteuid() != 0:
        pytest.skip("a full disk is a small tmpfs, which needs root to mount (the file-size-limit test runs anyway)")
    folder.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(folder)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()})")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(folder: Path, leave: int) -> None:
    """Fill the disk of ``folder`` until ``leave`` bytes are free."""
    free = shutil.disk_usage(folder).free
    if free > leave:
        with open(folder / "filler", "wb") as f:
            f.write(b"\0" * (free - leave))


@pytest.mark.parametrize(("kind", "leave_kb", "stage"), [
    ("cog", 64, "stream"),    # the streamed GeoTIFFs do not fit
    ("cog", 440, "copy"),     # the streams fit (2 x 205 kB), the COGs do not: GDAL only logs this
    ("zarr", 64, "chunks"),   # the chunks do not fit
])
def test_full_disk_during_each_stage_exit_2_old_output_kept(kind, leave_kb, stage, cli, inputs, tmp_path):
    with small_disk(tmp_path / "disk", 2048) as disk:
        out = place_old(inputs, disk, kind)
        finals = _io.output_paths(out)
        before = digest(finals)
        fill(disk, leave_kb * 1024)
        proc = cli("superresolve", str(inputs["tif"]), str(out), "--overwrite", *FAST)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr
        assert "disk holding" in proc.stderr and "is full" in proc.stderr and "nothing was published" in proc.stderr
        if stage == "copy":
            assert "does not read back" in proc.stderr  # the COG copy "succeeded"; reading it back did not
        assert digest(finals) == before and assert_old_or_new(inputs, out) == "old"
        assert hidden(disk) == []
        # without an old output: nothing at all appears
        (disk / "filler").unlink()
        for p in finals:
            shutil.rmtree(p) if p.is_dir() else p.unlink()
        fill(disk, leave_kb * 1024)
        assert cli("superresolve", str(inputs["tif"]), str(out), *FAST).returncode == 2
        assert sorted(p.name for p in disk.iterdir()) == ["filler"]


def test_file_size_limit_exit_2_with_the_cause(cli, inputs, tmp_path):
    out = tmp_path / "out.tif"
    proc = cli("superresolve", str(inputs["tif"]), str(out), *FAST, fsize=100_000)  # streams are 205 kB
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "file-size limit" in proc.stderr and "ulimit -f" in proc.stderr
    assert not out.exists() and hidden(tmp_path) == []


# --------------------------------------------------------------------------- concurrent writers


def _stopped(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] == "T"


@pytest.mark.parametrize("name", ["out.tif", "out.zarr"])
def test_concurrent_writers_exactly_one_wins(name, cli, inputs, tmp_path):
    out = tmp_path / name
    env = {**os.environ, "PYTHONPATH": str(ROOT), "XR_OPENSR_TEST_FAULT": "streaming:SIGSTOP"}
    first = subprocess.Popen([sys.executable, "-m", "xr_opensr.cli", "superresolve", str(inputs["tif"]), str(out),
                              *FAST], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not _stopped(first.pid):  # it stops itself while writing, holding the lock
            assert time.monotonic() < deadline and first.poll() is None
            time.sleep(0.05)
        for extra in ([], ["--overwrite"]):  # the second writer exits 2 at once naming the path
            second = cli("superresolve", str(inputs["tif"]), str(out), *FAST, *extra)
            assert second.returncode == 2 and "Traceback" not in second.stderr
            assert f"another run is writing {out}" in second.stderr
    finally:
        os.kill(first.pid, signal.SIGCONT)
        first.communicate(timeout=180)
    assert first.returncode == 0
    assert assert_old_or_new(inputs, out) == "new" and hidden(tmp_path) == []
    before = digest(_io.output_paths(out))  # done: a later run without --overwrite is refused
    later = cli("superresolve", str(inputs["tif"]), str(out), *FAST)
    assert later.returncode == 2 and "already exists" in later.stderr
    assert digest(_io.output_paths(out)) == before


def test_simultaneous_writers_one_exit_0_one_exit_2(inputs, tmp_path):
    out = tmp_path / "race.tif"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("XR_OPENSR_TEST_FAULT", None)
    argv = [sys.executable, "-m", "xr_opensr.cli", "superresolve", str(inputs["tif"]), str(out), *FAST]
    procs = [subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [(p.wait(timeout=180), p.communicate()[1]) for p in procs]
    assert sorted(rc for rc, _ in results) == [0, 2]
    loser = next(err for rc, err in results if rc == 2)
    assert str(out) in loser and ("another run is writing" in loser or "already exists" in loser)
    assert assert_old_or_new(inputs, out) == "new" and hidden(tmp_path) == []


# --------------------------------------------------------------------------- read-only and forbidden targets


def test_read_only_target_exit_2_the_real_cause(cli, inputs, tmp_path):
    with small_disk(tmp_path / "ro", 1024) as disk:
        out = place_old(inputs, disk, "cog")
        before = digest(_io.output_paths(out))
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        for name, extra in (("out.tif", ["--overwrite"]), ("new.zarr", [])):
            proc = cli("superresolve", str(inputs["tif"]), str(disk / name), *FAST, *extra)
            assert proc.returncode == 2 and "Traceback" not in proc.stderr
            assert "Read-only file system" in proc.stderr and "write to a writable folder" in proc.stderr
        assert digest(_io.output_paths(out)) == before


def test_forbidden_folder_exit_2_permission_denied(inputs):
    if os.geteuid() != 0:
        pytest.skip("runs the CLI as 'nobody' (needs root); a non-root user meets EACCES the same way")
    shared = Path(tempfile.mkdtemp(prefix="xr-opensr-eacces-"))
    try:
        shared.chmod(0o755)
        src = shared / "in.tif"
        shutil.copy(inputs["tif"], src)
        src.chmod(0o644)
        (shared / "root-only").mkdir(mode=0o755)
        try:
            proc = fresh_cli("superresolve", str(src), str(shared / "root-only" / "o.tif"), *FAST,
                             user=65534, group=65534, extra_groups=[], env={"HOME": str(shared)})
        except PermissionError as err:
            pytest.skip(f"'nobody' cannot start the test interpreter here ({err})")
        if proc.returncode != 2 and "root-only" not in proc.stderr:
            pytest.skip(f"'nobody' cannot run the test interpreter here: {proc.stderr[-300:]}")
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert "Permission denied" in proc.stderr and "no permission to write" in proc.stderr
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def test_missing_folder_and_input_is_output(cli, inputs, tmp_path):
    proc = cli("superresolve", str(inputs["tif"]), str(tmp_path / "no" / "o.tif"), *FAST)
    assert proc.returncode == 2 and "mkdir -p" in proc.stderr
    copy = tmp_path / "in.tif"
    shutil.copy(inputs["tif"], copy)
    before = digest([copy])
    proc = cli("superresolve", str(copy), str(copy), "--overwrite", *FAST)
    assert proc.returncode == 2 and "is the input" in proc.stderr
    assert digest([copy]) == before


# --------------------------------------------------------------------------- corrupt inputs


def test_truncated_cog_input_exit_2_clear_message(cli, inputs, tmp_path):
    cog = tmp_path / "in.tif"
    rasterio.shutil.copy(str(inputs["tif"]), str(cog), driver="COG", BLOCKSIZE="16", COMPRESS="DEFLATE")
    data = cog.read_bytes()
    cog.write_bytes(data[: int(len(data) * 0.6)])
    proc = cli("superresolve", str(cog), str(tmp_path / "o.tif"), *FAST)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"cannot read {cog}" in proc.stderr and "truncated or corrupt" in proc.stderr
    assert hidden(tmp_path) == [] and not (tmp_path / "o.tif").exists()


def test_corrupt_zarr_chunk_exit_2_clear_message(cli, inputs, tmp_path):
    store = tmp_path / "in.zarr"
    shutil.copytree(inputs["zarr"], store)
    chunk = next(p for p in sorted((store / "B04").iterdir()) if not p.name.startswith("."))
    chunk.write_bytes(b"\x00garbage" * 8)
    proc = cli("superresolve", str(store), str(tmp_path / "o.zarr"), *FAST)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"cannot read {store / 'B04'}" in proc.stderr and "truncated or corrupt" in proc.stderr
    assert hidden(tmp_path) == [] and not (tmp_path / "o.zarr").exists()


# --------------------------------------------------------------------------- the pieces, in process


def test_reader_refuses_a_pair_of_two_runs(cli, inputs, tmp_path):
    out = place_old(inputs, tmp_path, "cog")
    shutil.copy(_io.uncertainty_path(inputs["new_cog"]), tmp_path / "out_uncertainty.tif")  # a hand-made mix
    with pytest.raises(InputError, match="come from different runs"):
        _io.open_result(out)


def test_lock_is_exclusive_across_processes_and_reentrant(tmp_path):
    out = tmp_path / "x.zarr"
    code = ("import time; from pathlib import Path; from xr_opensr import _atomic\n"
            f"with _atomic.locked([Path({str(out)!r})]):\n    print('held', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(ROOT)},
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputError, match=f"another run is writing {out}"), _atomic.locked([out]):
            pass
    finally:
        holder.kill()
        holder.wait()
    with _atomic.locked([out]), _atomic.locked([out]):  # the holder died: the lock is free; re-entrant
        assert (tmp_path / ".x.zarr.xr-opensr-lock").exists()
    assert hidden(tmp_path) == []


def test_commit_exchanges_a_folder_and_recovery_rolls_forward(tmp_path):
    final = tmp_path / "s.zarr"
    final.mkdir()
    (final / "old").write_text("old")
    with _atomic.locked([final]):  # temporaries are made under the lock (before it, they are a dead run's)
        tmp = _atomic.temp_path(final, "zarr", "r1")
        tmp.mkdir()
        (tmp / "new").write_text("new")
        _atomic.commit([(tmp, final)], "r1")
    assert sorted(p.name for p in final.iterdir()) == ["new"] and hidden(tmp_path) == []
    # a journal whose rename did not happen (the writer died after committing): the next lock finishes it
    tmp2 = _atomic.temp_path(final, "zarr", "r2")
    tmp2.mkdir()
    (tmp2 / "newer").write_text("x")
    entry = {"tmp": tmp2.name, "final": final.name, "ino": tmp2.stat().st_ino}
    _atomic.journal_path(final).write_text(json.dumps({"run": "r2", "moves": [entry]}))
    with pytest.raises(OutputError, match="was interrupted"):
        _io.open_result(final)
    _io.finish(final)
    assert sorted(p.name for p in final.iterdir()) == ["newer"] and hidden(tmp_path) == []


def test_cleanup_errors_are_logged_never_raised(tmp_path, caplog):
    if os.geteuid() != 0:
        pytest.skip("makes a read-only bind mount (root)")
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "x").write_text("x")
    if subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True).returncode:
        pytest.skip("cannot bind-mount here")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], check=True)
        _atomic.remove_quietly(folder / "x")  # EROFS: logged, not raised (it would hide the real error)
    finally:
        subprocess.run(["umount", str(folder)], check=False)
    assert "could not remove" in caplog.text and "Read-only file system" in caplog.text
