"""Publishing outputs atomically: an exclusive lock per output, a commit journal, stale-temp cleanup.

Used by :mod:`xr_opensr._io` (COG and Zarr writers, the CLI) and ``examples/batch_job.py``. The rules:

* **Lock.** A run that writes ``OUT`` holds ``flock(LOCK_EX | LOCK_NB)`` on ``.OUT.xr-opensr-lock``
  (beside ``OUT``) from before its first byte until its last rename. A second run on the same path
  fails at once with :class:`~xr_opensr.errors.OutputError` naming the path (CLI: exit 2). The kernel
  drops the lock when its holder dies (even by SIGKILL); the file is removed on release. Creating it
  is also the first write into the output folder, so a missing, read-only or forbidden folder is
  reported before any work.
* **Temporary names.** Everything a run writes before publishing is named
  ``.OUT.xr-opensr-<kind>-<run id>`` beside ``OUT`` (same file system, so renames are atomic).
* **Commit.** Once every new file is complete and verified, a journal ``.OUT.xr-opensr-journal``
  listing the renames (temporary name, final name, inode of the new data) is written atomically
  (write, fsync, rename): from then on the run is committed. Then the renames run: files with
  ``os.replace``, a folder over an existing one with ``renameat2(RENAME_EXCHANGE)`` (so the name
  never points at nothing; two renames where the file system lacks it). The journal is removed last.
* **Recovery.** A run that takes the lock first rolls forward any journal it finds (a committed run
  that died while renaming): each listed rename whose final name does not yet hold the journal's
  inode is completed. Readers (:func:`xr_opensr._io.open_result`) refuse an output with a journal
  beside it, naming the command that finishes it.
* **Stale temporaries.** Then it removes every ``.OUT.xr-opensr-*`` sibling (and the
  ``.OUT.stream-*``/``.cog-*``/``.partial-*``/``.old-*`` names of earlier versions): they can only
  belong to dead runs, since a live run would hold the lock.

Test hook: with ``XR_OPENSR_TEST_FAULT=<stage>[:<signal>]`` in the environment, :func:`stage` sends
the signal (default ``SIGKILL``) to the process itself when the writer reaches that stage; the
fault-injection tests (``tests/test_faults.py``) kill runs at exact points this way.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import logging
import os
import re
import shutil
import signal
import socket
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

from .errors import OutputError

__all__ = [
    "new_run_id", "temp_path", "journal_path", "locked", "temporaries", "commit", "recover", "stage",
    "remove_quietly", "hint",
]

log = logging.getLogger("xr_opensr.io")

TAG = ".xr-opensr-"
_LEGACY = re.compile(r"\.(stream|cog|partial|old)-[0-9a-f]{8}$")
_RENAME_EXCHANGE = 2
_held: dict[Path, tuple[int, int]] = {}  # lock file -> (fd, depth): the lock is re-entrant in a process
_held_guard = threading.Lock()
_active: set[Path] = set()  # temporaries of the runs of this process that are in progress
_committed: set[Path] = set()  # temporaries named in a journal: only a rename may take them away


def new_run_id() -> str:
    """A random id naming one run's temporary files."""
    return uuid.uuid4().hex[:12]


def temp_path(final: Path, kind: str, run: str) -> Path:
    """``.OUT.xr-opensr-<kind>-<run>`` beside ``final``."""
    return final.with_name(f".{final.name}{TAG}{kind}-{run}")


def journal_path(final: Path) -> Path:
    return final.with_name(f".{final.name}{TAG}journal")


def _lock_path(final: Path) -> Path:
    return final.with_name(f".{final.name}{TAG}lock")


def stage(name: str) -> None:
    """Test hook: kill this process at stage ``name`` when ``XR_OPENSR_TEST_FAULT`` asks for it."""
    wanted = os.environ.get("XR_OPENSR_TEST_FAULT")
    if not wanted:
        return
    where, _, sig = wanted.partition(":")
    if where == name:
        os.kill(os.getpid(), getattr(signal, sig or "SIGKILL"))


def _remove_settled(path: Path, tries: int = 10, wait_s: float = 0.2) -> None:
    """Remove a temporary a failed run leaves; retried while it reappears or will not go, because a
    failed dask compute raises as soon as one task fails while the tasks already running in its
    threads still finish (a Zarr chunk written into a store being removed: "directory not empty")."""
    for _ in range(tries - 1):
        with contextlib.suppress(OSError):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        time.sleep(wait_s)  # let in-flight writers finish, then check that nothing came back
        if not (path.exists() or path.is_symlink()):
            return
    remove_quietly(path)  # the last try logs what could not be removed


def remove_quietly(path: Path) -> None:
    """Remove a file or folder; a failure is logged, never raised (it must not hide the real error)."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    except OSError as err:
        log.warning("could not remove the temporary %s (%s); delete it by hand", path, err.strerror or err)


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# --------------------------------------------------------------------------- the lock


def _acquire(final: Path) -> None:
    path = _lock_path(final)
    with _held_guard:
        if path in _held:
            fd, depth = _held[path]
            _held[path] = (fd, depth + 1)
            return
        while True:
            try:
                fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
            except OSError as err:
                raise OutputError(
                    f"cannot write into the folder of output {final}: {err.strerror or err} "
                    f"({err.filename or final.parent}); {hint(err, final.parent)}"
                ) from err
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                if err.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):  # a file system without flock
                    log.warning("%s: this file system has no file locks; concurrent runs are not detected", path)
                    break
                os.close(fd)
                if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise OutputError(
                        f"another run is writing {final} right now (it holds {path}); wait for it to "
                        "finish, or write to another path"
                    ) from None
                raise OutputError(f"cannot lock {path}: {err.strerror or err}; {hint(err, final.parent)}") from err
            # the holder before us may have unlinked the file between our open and flock: retry then
            try:
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.write(fd, f"{socket.gethostname()} pid {os.getpid()}\n".encode())
        _held[path] = (fd, 1)


def _release(final: Path) -> None:
    path = _lock_path(final)
    with _held_guard:
        fd, depth = _held[path]
        if depth > 1:
            _held[path] = (fd, depth - 1)
            return
        del _held[path]
        with contextlib.suppress(OSError):
            path.unlink()
        os.close(fd)


def release_all() -> None:
    """Release every output lock this process still holds: a program ending (``os._exit``) after an
    interrupt that cut a release short (the lock files are this process's own)."""
    with _held_guard:
        for path, (fd, _) in list(_held.items()):
            del _held[path]
            with contextlib.suppress(OSError):
                path.unlink()
            with contextlib.suppress(OSError):
                os.close(fd)


@contextlib.contextmanager
def locked(finals: Sequence[Path]) -> Iterator[list[Path]]:
    """Hold the lock of every path in ``finals``; roll forward journals and remove stale temporaries.

    Yields the stale temporary paths that were removed. Re-entrant within a process.
    """
    order = sorted({Path(p) for p in finals})
    taken: list[Path] = []
    try:
        for final in order:
            _acquire(final)
            taken.append(final)
        for final in order:
            recover(final)
        yield [p for final in order for p in _clean_stale(final)]
    finally:
        with _interrupts_held():  # a Ctrl-C in the middle must not leave a lock behind
            for final in reversed(taken):
                _release(final)


@contextlib.contextmanager
def _interrupts_held() -> Iterator[None]:
    """SIGINT and SIGTERM held back while inside (delivered right after, at exit)."""
    try:
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    except (AttributeError, ValueError, OSError):  # no POSIX signal masks here
        yield
        return
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _clean_stale(final: Path) -> list[Path]:
    own = {_lock_path(final).name, journal_path(final).name}
    prefix = f".{final.name}"
    removed = []
    with contextlib.suppress(OSError):
        for sibling in final.parent.iterdir():
            name = sibling.name
            if not name.startswith(prefix) or name in own:
                continue
            rest = name[len(prefix):]
            active = any(str(p) == str(sibling) for p in _active)
            if not active and (rest.startswith(TAG) or _LEGACY.fullmatch(rest)):
                log.warning("removing %s, left by an interrupted run", sibling)
                remove_quietly(sibling)
                removed.append(sibling)
    return removed



@contextlib.contextmanager
def temporaries(*paths: Path) -> Iterator[None]:
    """Mark ``paths`` as in use by this process's run, and remove whatever is left of them at exit."""
    _active.update(paths)
    try:
        yield
    finally:
        for path in paths:
            _active.discard(path)
            if path in _committed:
                _committed.discard(path)
            elif path.exists() or path.is_symlink():
                _remove_settled(path)


# --------------------------------------------------------------------------- commit and recovery


def _exchange(a: Path, b: Path) -> bool:
    """Swap two names atomically (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def _move(tmp: Path, final: Path, run: str) -> None:
    """Put ``tmp`` under ``final``; the old ``final`` (if any) goes away only once the new one is there."""
    if not (final.exists() or final.is_symlink()) or (tmp.is_file() and not final.is_dir()):
        os.replace(tmp, final)
        return
    if _exchange(tmp, final):
        remove_quietly(tmp)  # now the old data
        return
    old = temp_path(final, "old", run)
    os.rename(final, old)
    os.rename(tmp, final)
    remove_quietly(old)


def commit(moves: Sequence[tuple[Path, Path]], run: str) -> None:
    """Publish ``(temporary, final)`` pairs, in order, through a journal beside the first final name.

    Call it with the lock of every final name held and every temporary complete and verified.
    """
    if not moves:
        return
    primary = moves[0][1]
    entries = [{"tmp": tmp.name, "final": final.name, "ino": os.stat(tmp).st_ino} for tmp, final in moves]
    journal = journal_path(primary)
    scratch = temp_path(primary, "journal", run)
    with open(scratch, "w") as f:
        json.dump({"run": run, "moves": entries}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(scratch, journal)
    _committed.update(tmp for tmp, _ in moves)
    _fsync_dir(primary.parent)
    try:
        stage("journal")
        for i, (tmp, final) in enumerate(moves):
            _move(tmp, final, run)
            if i == 0:
                stage("renaming")
        _fsync_dir(primary.parent)
        stage("renamed")
    except BaseException:  # committed: an interruption (SIGINT) or an error finishes the renames first
        with contextlib.suppress(Exception):
            recover(primary)
        raise
    journal.unlink()
    _fsync_dir(primary.parent)


def recover(final: Path) -> bool:
    """Finish the renames of a committed run that died (its journal is beside ``final``).

    Returns True when there was something to finish. Call it with the lock of ``final`` held.
    """
    journal = journal_path(final)
    if not journal.exists():
        return False
    try:
        entries = json.loads(journal.read_text())["moves"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise OutputError(f"the commit journal {journal} is unreadable ({err}); inspect {final} and delete "
                          "the journal by hand") from err
    for entry in entries:
        tmp, dest = final.with_name(entry["tmp"]), final.with_name(entry["final"])
        with contextlib.suppress(FileNotFoundError):
            if os.lstat(dest).st_ino == entry["ino"]:
                continue  # already in place
        if tmp.exists() and os.lstat(tmp).st_ino == entry["ino"]:
            _move(tmp, dest, "recover")
    log.warning("finished publishing %s, interrupted in an earlier run", final)
    journal.unlink()
    _fsync_dir(final.parent)
    return True


def hint(err: BaseException, folder: Path) -> str:
    """The fix for an OS error while writing into ``folder``, from its errno or, failing that, the disk."""
    code = getattr(err, "errno", None)
    fixes = {
        errno.ENOSPC: f"the disk holding {folder} is full: free space or write elsewhere",
        errno.EDQUOT: f"the disk quota for {folder} is used up: free space or write elsewhere",
        errno.EFBIG: "the file-size limit of this process is too small (`ulimit -f`): raise it or write less",
        errno.EROFS: f"{folder} is on a read-only file system: write to a writable folder",
        errno.EACCES: f"no permission to write in {folder}: write to a folder you own",
        errno.EPERM: f"no permission to write in {folder}: write to a folder you own",
        errno.ENOENT: f"the folder {folder} does not exist: create it first (mkdir -p {folder})",
    }
    if code in fixes:
        return fixes[code]
    text = str(err)
    for code, marker in ((errno.ENOSPC, "No space left"), (errno.EFBIG, "File too large"),
                         (errno.EROFS, "Read-only file system"), (errno.EACCES, "Permission denied")):
        if marker in text:
            return fixes[code]
    with contextlib.suppress(OSError):
        if shutil.disk_usage(folder).free < 1 << 20:
            return fixes[errno.ENOSPC]
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    if soft != resource.RLIM_INFINITY:
        return f"the file-size limit of this process is {soft} bytes (`ulimit -f`): raise it or write less"
    return f"check that {folder} is writable and has free space"
