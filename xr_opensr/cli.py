"""The ``xr-opensr`` command line. Each sub-command is a function ``cmd_<name>(args) -> int``.

Exit codes: 0 success; 2 bad input, option or path, an OS error (missing or read-only folder, no
permission, no space, file-size limit), another run writing the same output, or a search that found
no scene (the message on stderr names the cause and the fix, never a traceback); 130 interrupted (Ctrl-C
at any point, also once the outputs are published: they stay, complete).
Outputs are verified and published atomically, or not at all (see ``xr_opensr._io``); ``--overwrite``
replaces only outputs of xr-opensr, never a folder or file it did not write.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from . import _atomic
from .errors import OpenSRError

__all__ = ["main", "build_parser", "CLIError"]

EARTH_SEARCH = "https://earth-search.aws.element84.com/v1"
DEMO_DIR = "opensr-demo"
_UNTRAINED_MARK = "NOT a meaningful"


class CLIError(OpenSRError):
    """A command-line problem: an option, a path, a missing optional dependency or a cluster."""


# --------------------------------------------------------------------------- helpers


def _say(text: str = "") -> None:
    print(text, flush=True)


def _warn(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _require(module: str, extra: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise CLIError(f"this command needs {module.split('.')[0]} ({err}): pip install \"xr-opensr[{extra}]\"") from err


def _number(kind: type, ok: Callable[[Any], bool], expected: str) -> Callable[[str], Any]:
    """An argparse type: ``kind(text)`` that satisfies ``ok``, else "expected <expected>, got ..."."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not ok(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return parse


def _positive(kind: type = int) -> Callable[[str], Any]:
    return _number(kind, lambda v: v > 0, f"a positive {kind.__name__}")


def _device(text: str) -> str:
    import re

    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", text):
        raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:N, got {text!r}")
    return text


_cloud_percent = _number(float, lambda v: 0 <= v <= 100, "a percentage in [0, 100]")


def _chunks(text: str) -> int | str:
    if text == "auto":
        return text
    return _positive(int)(text)


def _is_untrained(options: dict[str, Any]) -> bool:
    """True for models with seeded random weights (the shipped 'tiny'): a model declares it
    (:attr:`xr_opensr.models.base.ModelInfo.trained`). The model of the run's own options: the one
    ``superresolve`` loaded, cached in this process (never loaded a second time)."""
    from . import _runtime
    from .options import RunOptions

    return not _runtime.get_model(RunOptions(**options).spec().ref).info.trained


def _model_report(result: Any, model: str, caught: Sequence[warnings.WarningMessage],
                  options: dict[str, Any]) -> bool:
    """Print which model ran; shout when it is the untrained fallback. Returns True if untrained."""
    attrs = result.attrs
    name, version = attrs.get("model", model), attrs.get("model_version", "?")
    fallback = any(_UNTRAINED_MARK in str(w.message) for w in caught)
    untrained = fallback or _is_untrained(options)
    _say(
        f"model: {name} {version} (requested {model!r}); {attrs.get('samples')} samples, "
        f"{attrs.get('steps')} DDIM steps, seed {attrs.get('seed')}, patch {attrs.get('patch')} px"
    )
    if attrs.get("model20"):
        _say(f"20 m bands: model {attrs['model20']} {attrs.get('model20_version', '?')}")
    for w in caught:
        if _UNTRAINED_MARK not in str(w.message):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if untrained:
        why = (
            "no trained 'default' model is installed, so this ran the UNTRAINED 'tiny' model"
            if fallback
            else f"model {name!r} has seeded random weights (it exists for tests)"
        )
        bar = "!" * 78
        _warn(
            f"{bar}\n!! WARNING: {why}.\n!! Its output is NOT a meaningful super-resolution: it only shows that the "
            "pipeline runs.\n!! Use a trained model: --model /path/to/model-folder (python -m training export) or a "
            "converted\n!! LDSR-S2 v1 checkpoint (xr-opensr convert opensr-ldsrs2_v1_0_0.ckpt ldsr-v1/).\n" + bar
        )
    return untrained


@contextlib.contextmanager
def _dask_runner(args: argparse.Namespace) -> Iterator[Callable[..., Any]]:
    """Yield ``compute(*delayed)``: local threads (dask ProgressBar) or a dask.distributed cluster."""
    progress = not getattr(args, "no_progress", False)
    address, workers = getattr(args, "scheduler", None), getattr(args, "workers", None)
    gpu = getattr(args, "gpu_workers", False)
    if address is None and workers is None and not gpu:
        import dask
        from dask.diagnostics import ProgressBar

        def compute_local(*collections: Any) -> Any:
            bar = ProgressBar(out=sys.stderr) if progress else contextlib.nullcontext()
            with bar:
                return dask.compute(*collections)

        yield compute_local
        return

    distributed = _require("distributed", "distributed")
    with contextlib.ExitStack() as stack:
        if address is not None:
            try:
                client = stack.enter_context(distributed.Client(address, timeout="15s"))
            except (OSError, TimeoutError) as err:
                raise CLIError(
                    f"cannot connect to a dask scheduler at {address!r} ({err}); start one with "
                    "`dask scheduler` + `dask worker ADDRESS`, or use --workers N for a local cluster"
                ) from err
        else:
            if gpu:
                from . import _runtime

                cluster = stack.enter_context(
                    _runtime.local_cluster(args.device, threads=args.threads, dashboard_address=":0")
                )
            else:
                cluster = stack.enter_context(
                    distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                             dashboard_address=":0")
                )
            client = stack.enter_context(distributed.Client(cluster))
        _say(f"dask cluster: {client.scheduler.address}, {len(client.scheduler_info()['workers'])} workers")

        def compute_cluster(*collections: Any) -> Any:
            futures = client.compute(list(collections))
            if progress:
                distributed.progress(futures)
                print(file=sys.stderr)
            return client.gather(futures)

        yield compute_cluster


def _superresolve(obj: Any, args: argparse.Namespace, bands: Any = None) -> tuple[Any, bool]:
    """Build the lazy result with the CLI options and ``superresolve(bands=bands)``; print the model.
    Returns (result, untrained)."""
    from . import accessor  # noqa: F401  (registers .opensr)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        options = {name: getattr(args, flag[2:]) for flag, (name, _) in SR_OPTIONS.items()}
        result = obj.opensr.superresolve(**options, bands=bands)
    return result, _model_report(result, args.model, caught, options)


def _all_bands(bands: Sequence[str] | None) -> bool:
    """``--bands all``."""
    return bands is not None and [b.strip().lower() for b in bands] == ["all"]


def _bands_arg(asked: Sequence[str] | None) -> Any:
    """``superresolve(bands=...)`` of ``--bands`` as given: "all" for ``--bands all``, the bands named, or None."""
    return "all" if _all_bands(asked) else (list(asked) if asked else None)


def _band_labels(obj: Any) -> list[Any] | None:
    """The input's band labels: a Dataset's variable names, a DataArray's ``band`` labels; None without."""
    if hasattr(obj, "data_vars"):
        return [str(name) for name in obj.data_vars]
    if "band" not in obj.dims:
        return None
    return list(obj["band"].values) if "band" in obj.coords else list(range(1, obj.sizes["band"] + 1))


def _band_id(label: Any) -> str | None:
    from .sentinel2 import canonical_band

    return canonical_band(label) if isinstance(label, str) else None


def _asked_ids(names: Sequence[str], *, where: str, dash: bool) -> list[str | None]:
    """The band ids of ``--bands`` names (None for ``-`` where ``dash``): every name a band the models take,
    none twice; else a CLIError naming the name and the fix."""
    from .sentinel2 import SR_BANDS

    ids: list[str | None] = []
    for name in names:
        if dash and name == "-":
            ids.append(None)
            continue
        band = _band_id(name)
        skip = " or '-' for a band not to super-resolve" if dash else ""
        if band is None:
            raise CLIError(
                f"--bands: {name!r} is not a band name; {where} with the names {' '.join(SR_BANDS)} (or aliases "
                f"such as red, nir, swir16){skip}"
            )
        if band not in SR_BANDS:
            fix = "write '-' in its place to leave it out" if dash else "leave it out of --bands"
            raise CLIError(f"--bands: {name} cannot be super-resolved (the models take {' '.join(SR_BANDS)}); {fix}")
        if band in ids:
            raise CLIError(f"--bands names {band} twice ({' '.join(names)}); name each band once")
        ids.append(band)
    return ids


def _input_bands(obj: Any, asked: Sequence[str] | None, source: str) -> tuple[Any, Any]:
    """The input with its bands named, and ``superresolve(bands=...)`` for ``--bands``.

    An input whose band labels hold no band name (a GeoTIFF without band descriptions: bands 1..N) is
    named by ``--bands``, one name per band in file order (``-``: a band not to super-resolve), and all
    the bands named are super-resolved. In an input with band names, ``--bands`` picks bands by name,
    ``--bands all`` every band the input holds of the ten. Either way the output holds exactly the
    bands asked for, or a CLIError names the problem and the CLI fix.
    """
    from ._inputs import _describe
    from .sentinel2 import GUIDED_BANDS, MODEL_BANDS, SR_BANDS

    everything = _all_bands(asked)
    labels = _band_labels(obj)
    if labels is None:  # no band dim: the library says what it needs
        return obj, _bands_arg(asked)
    ids = [_band_id(v) for v in labels]
    n = len(labels)
    if not any(ids) and not hasattr(obj, "data_vars"):
        example = " ".join([*SR_BANDS[:n], *["-"] * (n - len(SR_BANDS))])
        fix = (f"--bands {example} (one name per band of the file, in file order; '-' for a band not to "
               "super-resolve)")
        if asked is None or everything:
            why = "--bands all takes the bands by name" if everything else "its bands are found by name"
            raise CLIError(
                f"{source} has {n} bands without band names (no band descriptions) and {why}: name them, e.g. "
                f"{fix}, or write band descriptions into the file"
            )
        if len(asked) != n:
            raise CLIError(f"{source} has {n} bands but {len(asked)} band names were given with --bands "
                           f"({' '.join(asked)}); give {fix}")
        named = _asked_ids(asked, where="name the bands of the file", dash=True)
        requested = [b for b in named if b is not None]
        missing = [b for b in MODEL_BANDS if b not in requested]
        if missing:
            raise CLIError(
                f"{source}, as named by --bands, lacks {', '.join(missing)}: the four 10 m bands "
                f"{', '.join(MODEL_BANDS)} are super-resolved together (and guide the 20 m bands); name them "
                "among the bands of the file"
            )
        obj = obj.assign_coords(band=[b if b is not None else f"unnamed-{i + 1}" for i, b in enumerate(named)])
        return obj, requested
    missing = [b for b in MODEL_BANDS if b not in ids]
    if missing:
        raise CLIError(
            f"{source} lacks {_describe(missing, None)} (its bands: {', '.join(map(str, labels))}): the four 10 m bands "
            f"{', '.join(MODEL_BANDS)} are super-resolved together and guide the 20 m bands; use an input that "
            "holds them"
        )
    if asked is None or everything:
        return obj, "all" if everything else None
    requested = [b for b in _asked_ids(asked, where="pick bands of the input", dash=False) if b is not None]
    absent = [b for b in requested if b not in ids]
    if absent:
        raise CLIError(f"--bands {' '.join(asked)}: {source} has no {', '.join(absent)} (its bands: "
                       f"{', '.join(map(str, labels))}); ask for bands it holds, or --bands all")
    if not set(requested) & set(GUIDED_BANDS) and set(requested) != set(MODEL_BANDS):
        raise CLIError(f"--bands {' '.join(asked)}: the 10 m bands are super-resolved together; ask for all four "
                       f"(--bands {' '.join(MODEL_BANDS)}), or for a 20 m band with them")
    return obj, requested


def _describe_written(paths: Sequence[Path], seconds: float) -> None:
    for path in paths:
        size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size
        _say(f"wrote {path} ({size / 1e6:.1f} MB)")
    _say(f"wall time: {seconds:.1f} s")


def _select_time(obj: Any, when: str | None, source: str) -> Any:
    """``--time``: an integer position (negative counts from the end) or an ISO date or time inside the cube's
    time range (a date: the first step of that day, else the nearest step; a time: the nearest step); outside
    the range, a CLIError naming the range."""
    if when is None:
        return obj
    if "time" not in obj.dims:
        raise CLIError(f"--time {when}: {source} has no time dimension (one scene); drop --time")
    n = obj.sizes["time"]
    if when.lstrip("-").isdigit():
        if not -n <= int(when) < n:
            raise CLIError(f"--time {when}: {source} has {n} time step(s); give a position in 0..{n - 1} or a date")
        return obj.isel(time=[int(when)])
    import pandas as pd

    try:
        stamp = pd.Timestamp(when)
    except ValueError:
        stamp = None
    if stamp is None or pd.isna(stamp) or not _is_datetime(obj.time):
        raise CLIError(
            f"--time {when!r} is not a time step of {source}: give an integer position (0..{n - 1}) or an ISO "
            f"date such as {str(obj.time.values[0])[:10]}"
        )
    if stamp.tzinfo is not None:
        stamp = stamp.tz_convert("UTC").tz_localize(None)
    first, last = pd.Timestamp(obj.time.values.min()), pd.Timestamp(obj.time.values.max())
    day = not any(c in when for c in "T: ")  # a date alone: any time of that day is inside the range
    low, high = (first.normalize(), last.normalize()) if day else (first, last)
    if not low <= stamp <= high:
        raise CLIError(
            f"--time {when} is outside the time range of {source}, {first.isoformat()} to {last.isoformat()} "
            f"({n} step(s)); give a date inside it (the nearest step is taken) or a position 0..{n - 1}"
        )
    times = pd.DatetimeIndex(obj.time.values)
    same_day = times[times.normalize() == stamp.normalize()] if day else times[:0]
    pick = same_day[0] if len(same_day) else obj.time.sel(time=stamp, method="nearest").values
    return obj.sel(time=[pick])


def _one_time_step(obj: Any, output: str, source: str) -> None:
    """A GeoTIFF output holds one time step: an input with several needs --time (or a .zarr output)."""
    from . import _io

    if _io.output_kind(output) != "cog" or "time" not in obj.dims or obj.sizes["time"] == 1:
        return
    n = obj.sizes["time"]
    times = obj["time"].values
    span = f" ({str(times[0])[:19]} to {str(times[-1])[:19]})" if "time" in obj.coords else ""
    example = str(times[0])[:10] if "time" in obj.coords and _is_datetime(obj.time) else "0"
    raise CLIError(f"{source} has {n} time steps{span} and a GeoTIFF output ({output}) holds one: pick one with --time "
                   f"(e.g. --time {example}, a date or a position 0..{n - 1}), or write a .zarr output (every step)")


def _is_datetime(coord: Any) -> bool:
    import numpy as np

    return np.issubdtype(coord.dtype, np.datetime64)


# --------------------------------------------------------------------------- commands


def _foreign_model_folder(folder: Path) -> str | None:
    """Why the existing folder is not a model folder that ``convert --overwrite`` may replace; None if it is."""
    from .models.config import ModelConfig
    from .models.io import CARD_FILE, CONFIG_FILE, MEAN_NET_FILE, WEIGHTS_FILE

    known = {CONFIG_FILE, WEIGHTS_FILE, MEAN_NET_FILE, CARD_FILE}
    strangers = sorted(p.name for p in folder.iterdir() if p.name not in known or p.is_symlink() or not p.is_file())
    if strangers:
        return f"it holds {', '.join(strangers)}, which a model folder does not"
    try:
        ModelConfig.from_json(folder / CONFIG_FILE)
    except (OpenSRError, OSError, ValueError) as err:
        return f"its {CONFIG_FILE} is not a model config: {err}"
    return None


def _check_outdir(outdir: Path, overwrite: bool) -> None:
    """``convert``'s OUTDIR: new, empty, or (with --overwrite) a model folder; else a CLIError with the fix."""
    if not (outdir.exists() or outdir.is_symlink()):
        return
    if not outdir.is_dir():
        raise CLIError(f"OUTDIR {outdir} exists and is not a folder; it was left untouched: choose another OUTDIR")
    if not any(outdir.iterdir()):
        return
    if not overwrite:
        raise CLIError(f"OUTDIR {outdir} exists and is not empty; it was left untouched: choose a new OUTDIR, or "
                       "pass --overwrite to replace the model folder it holds")
    why = _foreign_model_folder(outdir)
    if why is not None:
        raise CLIError(
            f"OUTDIR {outdir} is not a model folder written by xr-opensr ({why}): --overwrite replaces only a "
            "model folder (config.json, weights, card), so it was left untouched; remove it yourself if it may "
            "go, or choose another OUTDIR"
        )


def cmd_convert(args: argparse.Namespace) -> int:
    from .models import convert_checkpoint

    outdir = Path(args.outdir).expanduser()
    _check_outdir(outdir, args.overwrite)  # before the checkpoint is read
    try:
        outdir.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CLIError(f"cannot create the folder of OUTDIR {outdir}: {err.strerror or err}; "
                       f"{_atomic.hint(err, outdir.parent)}") from err
    # the new folder is written beside OUTDIR and takes its place whole (never a mix of two models)
    with _atomic.locked([outdir]):
        _check_outdir(outdir, args.overwrite)
        run = _atomic.new_run_id()
        tmp = _atomic.temp_path(outdir, "model", run)
        with _atomic.temporaries(tmp):
            convert_checkpoint(args.checkpoint, tmp, ema=args.ema)
            _atomic.commit([(tmp, outdir)], run)
    print(f"wrote model folder {outdir} (load it with xr_opensr.load_model({str(outdir)!r}))")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    import torch

    from . import __version__, _runtime
    from .models import registered_models

    print(f"xr-opensr {__version__}, torch {torch.__version__}")
    cuda = torch.cuda.is_available()
    print(f"device: {'cuda (' + torch.cuda.get_device_name(0) + ')' if cuda else 'cpu'}")
    print("models:")
    for name, folder in registered_models().items():  # through the model interface: what each declares
        info = _runtime.get_model(_runtime.ModelRef(model=name, device="cpu")).info
        steps = f", {info.sampling.steps} steps" if info.sampling is not None else ""
        dims = f", core dims {info.core_dims}" if info.whole_dims else ""
        print(f"  {name:10s} {info.name} {info.version}  patch {info.patch} px{steps}{dims}  ({folder})")
    return 0


def _superresolve_and_write(obj: Any, args: argparse.Namespace, bands: Any = None) -> int:
    """Super-resolve ``obj`` (``superresolve(bands=bands)``) with the CLI options and write ``args.output``
    (COG or Zarr)."""
    from . import _io

    start = time.perf_counter()
    with _io.reserve(_io.output_paths(args.output), overwrite=args.overwrite), _dask_runner(args) as compute:
        result, _ = _superresolve(obj, args, bands)
        written = _io.write_result(result, args.output, overwrite=args.overwrite, compute=compute)
    _describe_written(written, time.perf_counter() - start)
    return 0


def cmd_superresolve(args: argparse.Namespace) -> int:
    from . import _io

    _io.check_outputs(args.output, overwrite=args.overwrite, inputs=[args.input])
    with _io.reserve(_io.output_paths(args.output), overwrite=args.overwrite):  # before any work: exit 2 at once
        obj = _io.open_input(args.input, chunks=args.chunks, variable=args.variable)
        obj, bands = _input_bands(obj, args.bands, args.input)
        obj = _select_time(obj, args.time, args.input)
        _one_time_step(obj, args.output, args.input)
        _say(f"input: {args.input} {dict(obj.sizes)}")
        if (stamp := _io.time_tag(obj)) is not None and args.time is not None:
            _say(f"time step {stamp} (--time {args.time})")
        return _superresolve_and_write(obj, args, bands)


def _parse_bbox(values: Sequence[float]) -> tuple[float, float, float, float]:
    west, south, east, north = values
    if not (-180 <= west < east <= 180 and -90 <= south < north <= 90):
        raise CLIError(f"--bbox {west} {south} {east} {north} is not a WEST SOUTH EAST NORTH box in degrees "
                       "(needs west < east, south < north); e.g. --bbox 9.0 45.0 9.1 45.1")
    return west, south, east, north


def _parse_datetime(text: str) -> str:
    import datetime as dt
    import re

    parts = text.split("/")
    if len(parts) > 2:
        raise CLIError(f"--datetime {text!r} must be a date or a range START/END, e.g. 2024-06-01/2024-06-30")
    for part in parts:
        if part in ("", "..") or re.fullmatch(r"\d{4}(-\d{2})?", part):
            continue
        try:
            dt.datetime.fromisoformat(part.replace("Z", "+00:00"))
        except ValueError:
            raise CLIError(
                f"--datetime {text!r}: {part!r} is not an ISO date; e.g. --datetime 2024-06-01/2024-06-30"
            ) from None
    return text


def _cloud(item: Any) -> float:
    value = item.properties.get("eo:cloud_cover")
    return float(value) if value is not None else float("inf")


def cmd_search(args: argparse.Namespace) -> int:
    from . import _io

    bbox = _parse_bbox(args.bbox)
    when = _parse_datetime(args.datetime)
    kind = _io.output_kind(args.output)
    if args.all and kind == "cog":
        raise CLIError("--all writes several scenes: use a .zarr OUTPUT (a GeoTIFF holds one scene)")
    _io.check_outputs(args.output, overwrite=args.overwrite)
    stac = _require("xr_opensr.stac", "stac")
    limit = {"limit": args.limit} if args.limit is not None else {}
    # least cloudy first; none found: InputError
    items = list(stac.search(bbox, when, url=args.url, collection=args.collection, max_cloud=args.max_cloud, **limit))
    if not items:
        raise CLIError(f"no scene found at {args.url} for bbox {list(bbox)} and {when}; widen --datetime "
                       "or raise --max-cloud")
    _say(f"found {len(items)} scene(s):")
    for item in sorted(items, key=lambda it: str(it.datetime)):
        _say(f"  {item.id}  {item.datetime:%Y-%m-%d}  cloud {_cloud(item):.1f}%")
    if not args.all:
        best = min(items, key=_cloud)
        day = best.datetime.date()
        items = [it for it in items if it.datetime.date() == day]  # the whole pass over the bbox
        _say(f"using the least cloudy: {best.id} ({day}, {len(items)} item(s) of that day)")
    # --bands: "all", or names, loaded with the 10 m bands that guide them; default the 10 m bands
    load = "all" if _all_bands(args.bands) else list(dict.fromkeys([*stac.DEFAULT_BANDS, *(args.bands or ())]))
    chunks = {"x": args.chunks, "y": args.chunks} if isinstance(args.chunks, int) else None
    ds = stac.load_s2(items, bands=load, chunks=chunks, bbox=bbox)
    if not args.all and "time" in ds.dims and ds.sizes["time"] > 1:
        ds = ds.isel(time=[0])
    _say(f"loaded {dict(ds.sizes)}")
    return _superresolve_and_write(ds, args, _bands_arg(args.bands))


def cmd_demo(args: argparse.Namespace) -> int:
    from . import _io

    outdir = Path(args.output).expanduser()
    if outdir.exists() and not outdir.is_dir():
        raise CLIError(f"--output {outdir} is a file; give a folder (it is created if missing)")
    paths = {"sr": outdir / "sr.tif", "uncertainty": outdir / "uncertainty.tif", "png": outdir / "quicklook.png"}
    existing = [p for p in paths.values() if p.exists() or p.is_symlink()]
    if existing and not args.overwrite:
        raise CLIError(
            f"{', '.join(map(str, existing))} already exist(s) and were left untouched; pass --overwrite to replace "
            "them or choose another --output folder"
        )
    why = {p: _foreign_quicklook(p) if p == paths["png"] else _io.foreign(p) for p in existing}
    _io.refuse_foreign([(p, reason) for p, reason in why.items() if reason is not None])
    testing = _require("xr_opensr.testing", "all")
    lr = testing.demo_cube(chunks={"y": args.chunks, "x": args.chunks})
    _say(f"demo cube: {dict(lr.sizes)} at 10 m, {lr.rio.crs} (built in, no network)")
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CLIError(f"cannot create the --output folder {outdir}: {err.strerror or err}; "
                       f"{_atomic.hint(err, outdir.parent)}") from err
    start = time.perf_counter()
    with _dask_runner(args) as compute:
        result, untrained = _superresolve(lr, args)
        arrays = {paths["sr"]: _io.with_attrs(result, "sr"), paths["uncertainty"]: _io.with_attrs(result, "uncertainty")}
        written = _io.write_cog(arrays, overwrite=args.overwrite, compute=compute)
    seconds = time.perf_counter() - start
    try:
        done = _io.open_cogs(paths["sr"], paths["uncertainty"]).assign_attrs(result.attrs)
        _quicklook_png(lr, done, paths["png"], untrained)
        written.append(paths["png"])
    except ImportError as err:
        _warn(f"no quicklook.png: {err}")
    _describe_written(written, seconds)
    if untrained:
        _warn("reminder: the output above comes from an UNTRAINED model and is NOT a meaningful super-resolution")
    return 0


#: the PNG ``Title`` of the demo's quicklook: what lets ``demo --overwrite`` know the file is its own
QUICKLOOK_TITLE = "xr-opensr quicklook"


def _png_text(path: Path) -> dict[str, str] | None:
    """The ``tEXt`` entries of a PNG file; None for a file that is not a PNG."""
    data = path.read_bytes()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        return None
    text, pos = {}, 8
    while pos + 8 <= len(data):
        length, kind = int.from_bytes(data[pos:pos + 4], "big"), data[pos + 4:pos + 8]
        if kind == b"tEXt":
            key, _, value = data[pos + 8:pos + 8 + length].partition(b"\0")
            text[key.decode("latin-1")] = value.decode("latin-1")
        elif kind == b"IEND":
            break
        pos += 12 + length
    return text


def _foreign_quicklook(path: Path) -> str | None:
    """Why an existing ``quicklook.png`` is not the demo's own (see :data:`QUICKLOOK_TITLE`); None if it is."""
    if path.is_dir():
        return "a folder"
    if not path.is_file():
        return "not a regular file"
    try:
        text = _png_text(path)
    except OSError as err:
        return f"unreadable: {err.strerror or err}"
    if text is None:
        return "not a PNG"
    if text.get("Title") != QUICKLOOK_TITLE:
        return f"a PNG without the title {QUICKLOOK_TITLE!r} of the demo's quicklook"
    return None


def _quicklook_png(lr: Any, result: Any, path: Path, untrained: bool) -> None:
    os.environ.setdefault("MPLBACKEND", "Agg")
    from . import plot

    fig = plot.quicklook(lr, result)
    if untrained:
        fig.suptitle("UNTRAINED model (random weights): NOT a meaningful super-resolution", color="red")
    tmp = path.with_name(f".{path.name}.partial.png")
    fig.savefig(tmp, dpi=110, metadata={"Title": QUICKLOOK_TITLE})
    os.replace(tmp, path)
    import matplotlib.pyplot as plt

    plt.close(fig)


# --------------------------------------------------------------------------- parser


#: the super-resolution options of demo, superresolve and search: CLI flag -> (RunOptions field, the CLI's own
#: argparse keywords). The default and the help (first sentence) are the field's where not given here, and the
#: field's check follows ``type`` (xr_opensr.options.RunOptions).
SR_OPTIONS: dict[str, tuple[str, dict[str, Any]]] = {
    "--model": ("model", {}),
    "--samples": ("samples", {"type": int}),
    "--steps": ("steps", {"type": int}),
    "--model20": ("model20", {}),
    "--seed": ("seed", {"type": int}),
    "--device": ("device", {"type": _device}),
    "--dtype": ("output_dtype", {"choices": ("float32", "uint16"), "default": "float32", "help": "output values: "
                                 "float32 reflectance, or uint16 DN = round(reflectance x 10000) with nodata 0 and "
                                 "scale 1e-4 (half the bytes, lossless to 1e-4)"}),
    "--precision": ("dtype", {"choices": ("float32", "bfloat16", "float16"), "default": "float32", "help":
                              "compute dtype of the denoiser and decoder: bfloat16 on a GPU or a CPU with "
                              "AMX/AVX512-BF16 (about 2-3x faster on such CPUs); float16 on a GPU only"}),
    "--threads": ("threads", {"type": int}),
    "--tiling": ("tiling", {"choices": ("blend", "crop")}),
    "--looks": ("looks", {"type": int}),
    "--window": ("window", {}),
}

#: the RunOptions fields that SR_OPTIONS leaves out, and why
NOT_IN_TABLE = {"bands": "each command's own --bands (names, 'all', file order with '-') gives bands=",
                **dict.fromkeys(("eta", "patch", "overlap", "batch_size", "histogram_matching"),
                                "Python only: the model's defaults serve the command line"),
                "return_samples": "Python only: the GeoTIFF/Zarr outputs hold sr and uncertainty"}


def _checked(name: str, parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse type: the text parsed by ``parse`` (as given if it cannot be), then the field's one check."""
    from .options import RunOptions

    def convert(text: str) -> Any:
        with contextlib.suppress(ValueError):
            text = parse(text)
        try:
            return RunOptions.check(name, text)
        except OpenSRError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    return convert


def _add_sr_options(p: argparse.ArgumentParser, *, chunks: int = 256) -> None:
    from .options import RunOptions

    field = RunOptions.__dataclass_fields__
    g = p.add_argument_group("super-resolution")
    for flag, (name, own) in SR_OPTIONS.items():
        summary = " ".join(field[name].metadata["doc"].replace("``", "").replace("%", "%%").split())
        kw = {"default": field[name].default, "help": summary.split(". ")[0].rstrip("."), **own}
        if "type" in own:  # text the CLI parses; the rest (names, paths, choices) as given
            kw["type"] = _checked(name, own["type"])
        if kw["default"] is not None:
            kw["help"] += " (default: %(default)s)"
        g.add_argument(flag, **kw)
    g.add_argument("--chunks", type=_chunks, default=chunks,
                   help="LR pixels per dask block side, or 'auto' (default: %(default)s)")
    g = p.add_argument_group("execution")
    ex = g.add_mutually_exclusive_group()
    ex.add_argument("--scheduler", metavar="ADDRESS",
                    help="run on an existing dask.distributed cluster, e.g. tcp://10.0.0.5:8786 (the workers must "
                    "reach the input and output paths)")
    ex.add_argument("--workers", type=_positive(int), metavar="N",
                    help="start a local dask.distributed cluster of N single-threaded worker processes")
    ex.add_argument("--gpu-workers", action="store_true",
                    help="one dask worker per GPU (dask_cuda.LocalCUDACluster: pip install 'xr-opensr[cuda]'); "
                    "without a GPU, CPU worker processes of --threads threads each")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--overwrite", action="store_true",
                   help="replace existing outputs (never done without it); only outputs of xr-opensr are replaced "
                   "(a GeoTIFF or Zarr store it wrote): a folder, another file or store under the output's name "
                   "is an error, left untouched")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xr-opensr", description="4x super-resolution of Sentinel-2 with a latent diffusion model",
        epilog="run `xr-opensr COMMAND --help` for the options of a command; start with `xr-opensr demo`",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    fmt = argparse.RawDescriptionHelpFormatter

    p = sub.add_parser(
        "demo", help="super-resolve the built-in demo cube: COGs + quicklook PNG (no network)", formatter_class=fmt,
        description="Super-resolve the built-in real Sentinel-2 demo crop (B04, B03, B02, B08 at 10 m) to 2.5 m.\n"
        "Writes OUTPUT/sr.tif and OUTPUT/uncertainty.tif (Cloud Optimized GeoTIFFs) and OUTPUT/quicklook.png.",
        epilog="example: xr-opensr demo --output opensr-demo/ --samples 10",
    )
    p.add_argument("--output", "-o", default=DEMO_DIR, metavar="DIR", help="output folder (default: ./%(default)s/)")
    _add_sr_options(p, chunks=128)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "superresolve", help="super-resolve a GeoTIFF/COG or Zarr file to a COG or Zarr store", formatter_class=fmt,
        description="Super-resolve INPUT (GeoTIFF/COG or Zarr; 10 m B04, B03, B02, B08 as DN or reflectance) 4x;\n"
        "with --bands all also the 20 m bands B05, B06, B07, B8A, B11, B12 the input holds (on the 10 m grid).\n"
        "OUTPUT.tif: sr -> OUTPUT.tif and uncertainty -> OUTPUT_uncertainty.tif (COGs, one time step: --time;\n"
        "its timestamp is the tag 'time');\n"
        "OUTPUT.zarr: one Zarr store with sr and uncertainty (any number of time steps).",
        epilog="examples:\n  xr-opensr superresolve s2.tif sr.tif --bands B04 B03 B02 B08\n"
        "  xr-opensr superresolve ten_bands.zarr sr.zarr --bands all\n"
        "  xr-opensr superresolve cube.zarr sr.zarr --workers 4 --samples 20",
    )
    p.add_argument("input", help="GeoTIFF/COG (.tif) or Zarr store (.zarr)")
    p.add_argument("output", help="output path ending in .tif (COG) or .zarr")
    p.add_argument("--bands", nargs="+", metavar="NAME",
                   help="the bands to super-resolve; the output holds exactly these. An input with band names "
                   "(band descriptions, Zarr variables): 'all' (every band it holds of the ten: B04, B03, B02, B08, "
                   "B05, B06, B07, B8A, B11, B12) or names, e.g. B04 B03 B02 B08 B11 (default: the four 10 m bands). "
                   "A GeoTIFF without band descriptions: one name per band of the file, in file order ('-' for a "
                   "band not to super-resolve), e.g. B04 B03 B02 B08; every band named is super-resolved")
    p.add_argument("--variable", help="the variable of a Zarr store to use, if not named like S2 bands")
    p.add_argument("--time", help="only this time step: an integer position (negative from the end) or an ISO "
                   "date or time inside the input's time range (a date: a step of that day, else the nearest; a "
                   "time: the nearest step; outside the range: an error); a GeoTIFF output records the step as "
                   "its tag 'time'")
    _add_sr_options(p)
    p.set_defaults(func=cmd_superresolve)

    p = sub.add_parser(
        "search", help="search a STAC API, load Sentinel-2 L2A and super-resolve it", formatter_class=fmt,
        description="Search a STAC API for Sentinel-2 L2A scenes over a bbox and dates, load them (odc-stac, SCL\n"
        "cloud mask), super-resolve the least cloudy one (or --all into a .zarr) and write OUTPUT.",
        epilog="example: xr-opensr search sr.tif --bbox 9.00 45.00 9.02 45.01 --datetime 2024-06-01/2024-06-30",
    )
    p.add_argument("output", help="output path ending in .tif (COG; one scene) or .zarr")
    p.add_argument("--bbox", nargs=4, type=float, required=True, metavar=("W", "S", "E", "N"),
                   help="area in degrees (WGS84): west south east north")
    p.add_argument("--datetime", required=True, metavar="START/END", help="date or range, e.g. 2024-06-01/2024-06-30")
    p.add_argument("--url", default=os.environ.get("XR_OPENSR_STAC_URL", EARTH_SEARCH),
                   help="STAC API (default: $XR_OPENSR_STAC_URL or %(default)s)")
    p.add_argument("--collection", default="sentinel-2-l2a", help="collection id (default: %(default)s)")
    p.add_argument("--max-cloud", type=_cloud_percent, default=20, help="largest eo:cloud_cover in %% (default: %(default)s)")
    p.add_argument("--limit", type=_positive(int), default=None, help="at most this many items from the search")
    p.add_argument("--all", action="store_true", help="super-resolve every scene found (needs a .zarr OUTPUT)")
    p.add_argument("--bands", nargs="+", metavar="NAME",
                   help="bands to load and super-resolve: 'all' (the four 10 m and six 20 m bands) or names, e.g. "
                   "B04 B11 (default: B04 B03 B02 B08)")
    _add_sr_options(p)
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("convert", help="convert an LDSR-S2 v1 .ckpt into a model folder")
    p.add_argument("checkpoint", help="path to opensr-ldsrs2_v1_0_0.ckpt (read with weights_only=True)")
    p.add_argument("outdir", help="new folder for config.json + model.safetensors")
    p.add_argument("--ema", action=argparse.BooleanOptionalAction, default=None,
                   help="use the EMA UNet weights (default: the raw ones, as opensr-model does)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing OUTDIR that is a model folder (config.json, weights, card; written "
                   "beside it, then swapped in); any other folder is an error, left untouched")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("info", help="versions, device and shipped models")
    p.set_defaults(func=cmd_info)
    return parser


def _command(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except OpenSRError as err:
        print(f"xr-opensr {args.command}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # one the library did not already explain: the cause, the path, the fix
        where = f" ({err.filename})" if err.filename else ""
        folder = Path(err.filename).parent if err.filename else Path.cwd()
        print(f"xr-opensr {args.command}: error: {err.strerror or err}{where}; {_atomic.hint(err, folder)}",
              file=sys.stderr)
        return 2


_late_interrupt: list[int] = []  # program mode: the Ctrl-Cs that came once the command had finished


def _hold_interrupts() -> None:
    """From now on a Ctrl-C only makes the exit code 130: the command has finished (its outputs are
    published, or nothing was written). Left alone when SIGINT is ignored (a background job)."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, lambda signum, frame: _late_interrupt.append(signum))


def _end_process(code: int) -> None:
    """End the program now, with ``code`` (130 after a late Ctrl-C). The interpreter's own teardown is
    skipped: it restores the default SIGINT action first and then takes seconds (torch, dask threads),
    so a Ctrl-C then killed the process (exit -2) after its outputs were complete."""
    import logging

    _atomic.stage("exiting")  # test hook (tests/test_cli_safety.py)
    _atomic.release_all()  # a Ctrl-C may have cut a lock's release short: the program's own lock files go
    if _late_interrupt and code != 130:
        print("interrupted (the command had finished)", file=sys.stderr)
        code = 130
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` and return its exit code (0, 2 or 130; see the module doc).

    Without ``argv`` (the ``xr-opensr`` console script, ``python -m xr_opensr.cli``) it is the program:
    it reads ``sys.argv`` and ends the process itself, so that Ctrl-C at any point exits 130, also while
    the interpreter shuts down. Callers in a Python process pass ``argv`` and get the code back.
    """
    program = argv is None
    try:
        try:
            code = _command(argv)
        except SystemExit as exit_:  # argparse: --help (0), a bad option (2)
            if not program:
                raise
            code = exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None)
            if isinstance(exit_.code, str):
                print(exit_.code, file=sys.stderr)
        if program:
            _hold_interrupts()
    except KeyboardInterrupt:
        if program:
            _hold_interrupts()
        print("interrupted", file=sys.stderr)
        code = 130
    if program:
        _end_process(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
