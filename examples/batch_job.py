"""Batch job: super-resolve every Sentinel-2 scene over an area and dates into ONE Zarr store.

Runs on a dask.distributed cluster (``--scheduler ADDRESS``) or a local one (``--workers N``). The
store holds one group per STAC item id (``/<item id>/sr``, ``/<item id>/uncertainty``, dims
``(time, band, y, x)`` on the scene's own 2.5 m UTM grid), written with Zarr format 2.

Idempotent: after a scene's data are written, its id is appended to the root attribute
``completed_scenes`` (and the group gets ``xr_opensr_complete = True``). A re-run skips scenes with
both markers and redoes any other (e.g. one whose write was interrupted), so an interrupted job is
resumed by running the same command again. The super-resolution settings are stored in the root
attribute ``xr_opensr_batch``; a re-run with other settings is refused (use ``--overwrite`` to start
again from scratch).

Safe against the unlucky: a job holds the store's lock (``xr_opensr._atomic``) for its whole run, so a
second job on the same store exits 2 at once, naming it; a scene is marked complete only after its
group is reopened and read in full (every chunk present and decodable); OS errors (full disk,
read-only folder, ...) exit 2 with the cause. ``--overwrite`` builds the new store beside the old one
and swaps them only when every scene is complete: until then (or if the run is interrupted or a scene
fails) the old store is left as it was.

Example::

    python examples/batch_job.py --bbox 9.00 45.148 9.016 45.153 --datetime 2024-06-01/2024-06-30 \\
        --out s2_sr.zarr --workers 4 --samples 10
    python examples/batch_job.py ... --scheduler tcp://10.0.0.5:8786   # an existing cluster

The workers write the Zarr chunks directly: ``--out`` must be a path they can reach (a shared
file system for a remote cluster).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import xarray as xr

import xr_opensr.accessor  # noqa: F401  (registers .opensr)
from xr_opensr import _atomic, _io
from xr_opensr.errors import InputError, OpenSRError

EARTH_SEARCH = "https://earth-search.aws.element84.com/v1"
COMPLETED = "completed_scenes"
SETTINGS = "xr_opensr_batch"
GROUP_MARK = "xr_opensr_complete"

log = logging.getLogger("xr_opensr.batch")


@dataclass
class BatchReport:
    """What a run did: scene ids processed now, skipped (already complete), and all found."""

    store: Path
    found: list[str] = field(default_factory=list)
    processed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    remaining: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


# --------------------------------------------------------------------------- the store


def _root(store: Path):
    import zarr

    # never the consolidated metadata here: it may be stale after an interruption
    return zarr.open_group(str(store), mode="a", zarr_format=_io.ZARR_FORMAT, use_consolidated=False)


def completed_scenes(store: str | Path) -> list[str]:
    """Scene ids whose data and markers are both in the store (read without consolidated metadata)."""
    import zarr

    store = Path(store)
    if not store.exists():
        return []
    root = zarr.open_group(str(store), mode="r", use_consolidated=False)
    done = []
    for sid in root.attrs.get(COMPLETED, []):
        with contextlib.suppress(KeyError, FileNotFoundError, ValueError, TypeError):
            group = root[sid]
            if group.attrs.get(GROUP_MARK) and {"sr", "uncertainty"} <= set(group.array_keys()):
                done.append(sid)
    return done


def _mark_complete(store: Path, sid: str) -> None:
    import zarr

    root = _root(store)
    root[sid].attrs[GROUP_MARK] = True
    done = [s for s in root.attrs.get(COMPLETED, []) if s != sid]
    root.attrs[COMPLETED] = [*done, sid]
    zarr.consolidate_metadata(str(store))


def _check_settings(store: Path, settings: dict[str, Any]) -> None:
    if store.exists() and not _io.is_zarr(store):
        raise InputError(f"{store} exists and is not a Zarr store; choose another --out")
    root = _root(store)
    previous = root.attrs.get(SETTINGS)
    if previous is not None and previous != settings:
        raise InputError(
            f"{store} was written with other settings ({json.dumps(previous, sort_keys=True)}); this run asks for "
            f"{json.dumps(settings, sort_keys=True)}. Use the same settings to resume, another --out, or --overwrite "
            "to start again"
        )
    root.attrs[SETTINGS] = settings


# --------------------------------------------------------------------------- cluster


@contextlib.contextmanager
def connect(scheduler: str | None = None, workers: int | None = None) -> Iterator[Any]:
    """A distributed Client: to ``scheduler``, or to a new LocalCluster of ``workers`` processes."""
    try:
        import distributed
    except ImportError as err:
        raise InputError(f'the batch job needs dask.distributed: pip install "xr-opensr[distributed]" ({err})') from err
    if scheduler is not None:
        with distributed.Client(scheduler, timeout="15s") as client:
            yield client
        return
    with distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as cluster, distributed.Client(cluster) as client:
        yield client


# --------------------------------------------------------------------------- the job


def _load_scene(stac: Any, item: Any, bbox: Sequence[float], chunks: int) -> xr.Dataset:
    """One scene, cropped to the bbox, SCL cloud mask applied (NaN), float32 reflectance."""
    return stac.load_s2([item], chunks={"x": chunks, "y": chunks}, bbox=tuple(bbox))


def run(
    *,
    out: str | Path,
    bbox: Sequence[float],
    datetime: str,
    client: Any,
    url: str = EARTH_SEARCH,
    collection: str = "sentinel-2-l2a",
    max_cloud: float = 100.0,
    limit: int = 500,
    model: str = "default",
    samples: int = 10,
    steps: int | None = None,
    seed: int = 0,
    chunks: int = 256,
    max_scenes: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> BatchReport:
    """Search, then super-resolve every scene not yet in ``out`` on the cluster of ``client``.

    Scenes are submitted together (the cluster works on several at once) and each is marked complete
    as soon as its data are written. ``max_scenes`` limits how many scenes this run processes. A scene
    that fails is logged and left unmarked (the next run retries it); the others go on.
    The settings that shape the data (model, samples, steps, seed, bbox, collection) are fixed per
    store; the dates may change between runs (e.g. to add new scenes to the store).
    """
    final = Path(out).expanduser().resolve()
    if final.suffix != ".zarr":
        raise InputError(f"--out {final} must end in .zarr (one Zarr store for all scenes)")
    if not final.parent.is_dir():
        raise InputError(f"the folder of --out {final} does not exist; create it first (mkdir -p {final.parent})")
    if final.exists() and (why := _io.foreign(final)) is not None:  # never write into, nor delete, a user's folder
        _io.refuse_foreign([(final, why)])
    run_id = _atomic.new_run_id()
    # --overwrite: a new store beside the old one, swapped in only when every scene is in it
    store = _atomic.temp_path(final, "batch", run_id) if overwrite and final.exists() else final
    with _atomic.locked([final]), _atomic.temporaries(*([store] if store != final else [])):
        report = _run_locked(store, bbox=bbox, datetime=datetime, client=client, url=url, collection=collection,
                             max_cloud=max_cloud, limit=limit, model=model, samples=samples, steps=steps, seed=seed,
                             chunks=chunks, max_scenes=max_scenes, progress=progress)
        if store != final:
            if report.failed or report.remaining:
                log.error("--overwrite: not every scene is done; %s was left as it was (run again)", final)
            else:
                _atomic.commit([(store, final)], run_id)
                log.info("--overwrite: %s replaced by the new store", final)
        report.store = final
    return report


def _run_locked(store: Path, *, bbox, datetime, client, url, collection, max_cloud, limit, model, samples, steps,
                seed, chunks, max_scenes, progress) -> BatchReport:
    from distributed import as_completed

    from xr_opensr import stac

    start = time.perf_counter()
    settings = {"model": str(model), "samples": int(samples), "steps": steps, "seed": int(seed),
                "bbox": [float(v) for v in bbox], "collection": collection}
    _check_settings(store, settings)

    found = stac.search(tuple(bbox), datetime, url=url, collection=collection, max_cloud=max_cloud, limit=limit)
    items = sorted(found, key=lambda it: (str(it.datetime), it.id))
    report = BatchReport(store=store, found=[it.id for it in items])
    done = set(completed_scenes(store))
    report.skipped = [it.id for it in items if it.id in done]
    todo = [it for it in items if it.id not in done]
    if max_scenes is not None:
        todo, rest = todo[:max_scenes], todo[max_scenes:]
        report.remaining = [it.id for it in rest]
    log.info("%d scene(s) found, %d already complete, %d to process now%s", len(items), len(report.skipped),
             len(todo), f", {len(report.remaining)} left for later (--max-scenes)" if report.remaining else "")

    futures, written = {}, {}
    for item in todo:
        ds = _load_scene(stac, item, bbox, chunks)
        result = ds.opensr.superresolve(samples, model=model, steps=steps, seed=seed)
        result.attrs.update(scene_id=item.id, stac_url=url, cloud_cover=float(item.properties.get("eo:cloud_cover", -1)))
        # mode "w" replaces a group left half-written by an interrupted run
        data = _io.uniform_chunks(result)
        delayed = data.to_zarr(store, group=item.id, mode="w", compute=False, consolidated=False,
                               zarr_format=_io.ZARR_FORMAT, write_empty_chunks=True)
        futures[client.compute(delayed)] = item.id
        written[item.id] = data
        log.info("scene %s submitted: %s LR px -> sr %s", item.id, dict(ds.sizes), dict(result.sr.sizes))
    from tqdm.auto import tqdm

    bar = tqdm(as_completed(list(futures)), total=len(futures), unit="scene", disable=not progress or not futures)
    for future in bar:
        sid = futures[future]
        try:
            future.result()
            _io.verify_zarr(store, written[sid], group=sid)  # every chunk there and readable
        except Exception as err:  # one bad scene must not stop the others
            report.failed[sid] = f"{type(err).__name__}: {err}"
            log.error("scene %s failed, not marked complete (a re-run retries it): %s", sid, report.failed[sid])
            continue
        _mark_complete(store, sid)
        report.processed.append(sid)
        log.info("scene %s written (%d/%d)", sid, len(report.processed), len(futures))
    if not futures and store.exists():
        import zarr

        zarr.consolidate_metadata(str(store))
    report.seconds = time.perf_counter() - start
    log.info("done: %d processed, %d skipped, %d failed in %.1f s -> %s", len(report.processed),
             len(report.skipped), len(report.failed), report.seconds, store)
    return report


# --------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="batch_job.py", description=__doc__.split("\n\n")[0],
        epilog="Re-run the same command to resume an interrupted job: complete scenes are skipped.",
    )
    p.add_argument("--bbox", nargs=4, type=float, required=True, metavar=("W", "S", "E", "N"),
                   help="area in degrees (WGS84)")
    p.add_argument("--datetime", required=True, metavar="START/END", help="e.g. 2024-06-01/2024-06-30")
    p.add_argument("--out", required=True, help="the Zarr store (.zarr), created or resumed")
    p.add_argument("--url", default=EARTH_SEARCH, help="STAC API (default: %(default)s)")
    p.add_argument("--collection", default="sentinel-2-l2a")
    p.add_argument("--max-cloud", type=float, default=100.0, help="largest eo:cloud_cover in %% (default: all)")
    p.add_argument("--limit", type=int, default=500, help="at most this many items from the search")
    p.add_argument("--model", default="default")
    p.add_argument("--samples", type=int, default=10)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chunks", type=int, default=256, help="LR pixels per dask block side")
    p.add_argument("--max-scenes", type=int, default=None, help="process at most this many scenes in this run")
    p.add_argument("--overwrite", action="store_true", help="delete the store and start again")
    p.add_argument("--no-progress", action="store_true")
    ex = p.add_mutually_exclusive_group()
    ex.add_argument("--scheduler", metavar="ADDRESS", help="address of an existing dask scheduler")
    ex.add_argument("--workers", type=int, metavar="N", help="start a local cluster of N worker processes")
    return p


def main(argv: Sequence[str] | None = None) -> BatchReport | int:
    """Run the job; returns the :class:`BatchReport`, or 2 on a usage error (bad option, store, search)."""
    args = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    log.setLevel(logging.INFO)
    try:
        if not (-180 <= args.bbox[0] < args.bbox[2] <= 180 and -90 <= args.bbox[1] < args.bbox[3] <= 90):
            raise InputError(f"--bbox {args.bbox} is not WEST SOUTH EAST NORTH in degrees")
        with connect(args.scheduler, args.workers) as client:
            log.info("dask cluster %s", client.scheduler.address)
            return run(
                out=args.out, bbox=args.bbox, datetime=args.datetime, client=client, url=args.url,
                collection=args.collection, max_cloud=args.max_cloud, limit=args.limit, model=args.model,
                samples=args.samples, steps=args.steps, seed=args.seed, chunks=args.chunks,
                max_scenes=args.max_scenes, overwrite=args.overwrite, progress=not args.no_progress,
            )
    except (OpenSRError, OSError) as err:
        print(f"batch_job: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    outcome = main()
    sys.exit(outcome if isinstance(outcome, int) else (1 if outcome.failed else 0))
