"""Command line: ``python -m training {data,autoencoder,diffusion,regression,spread,export,evaluate} --config FILE``.

Train, export and evaluate the default model (outputs in runs/default/)::

    python -m training autoencoder --config training/configs/default.json
    python -m training diffusion   --config training/configs/default.json
    python -m training regression  --config training/configs/default.json   # the deterministic baseline
    python -m training spread      --config training/configs/v2.json        # refit the spread head alone
    python -m training export      --config training/configs/default.json
    python -m training evaluate    --config training/configs/default.json

The 20 m-band model (``xr_opensr.models.guided``, outputs in runs/guided/guided/)::

    python -m training guided          --config training/configs/guided.json
    python -m training evaluate-guided --config training/configs/guided.json [--model-dir DIR] [--split val]

``evaluate`` scores the model (and the regression baseline, when trained) on the synthetic test
scenes, the real held-out split and the unseen-domain set; it writes ``metrics.json`` and
``EVALUATION.md`` into the model folder.

A stopped run (Ctrl-C, SIGTERM, a crash after a checkpoint) continues with ``--resume``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from xr_opensr.errors import OpenSRError

from .card import record_command
from .config import TrainConfig
from .loop import preview_data, setup_logging

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "default.json"
STAGES = ("data", "autoencoder", "diffusion", "regression", "spread", "export", "evaluate", "guided", "evaluate-guided",
          "multidate", "evaluate-multidate")
GUIDED = ("guided", "evaluate-guided")
MULTIDATE = ("multidate", "evaluate-multidate")
TRAINED = ("autoencoder", "diffusion", "regression", "spread")


def _override(cfg: TrainConfig, assignments: list[str]) -> TrainConfig:
    """Apply ``section.key=value`` (value parsed as JSON, else kept as a string)."""
    for item in assignments:
        key, sep, raw = item.partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot:
            raise SystemExit(f"--set expects section.key=value, got {item!r}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        if section == "model":
            cfg = cfg.replace(model=cfg.model.replace(**{name: value}))
        else:
            cfg = cfg.replace(**{section: {name: tuple(value) if isinstance(value, list) else value}})
    return cfg


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=STAGES, help="what to do")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="training config JSON "
                        "(default: training/configs/default.json)")
    parser.add_argument("--out", type=Path, default=None, help="run folder (default: runs/<config name>)")
    parser.add_argument("--steps", type=int, default=None, help="total steps of the stage (overrides the config)")
    parser.add_argument("--resume", action="store_true", help="continue the stage from its checkpoint")
    parser.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:1 ...")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a config value, e.g. --set autoencoder.lr=1e-4 (repeatable)")
    parser.add_argument("--model-dir", type=Path, default=None,
                        help="export/evaluate: the model folder (default: <out>/model)")
    parser.add_argument("--overwrite", action="store_true", help="export: replace an existing model folder")
    parser.add_argument("--base-model", default=None, metavar="NAME_OR_DIR",
                        help="export: model v2 = the diffusion networks of this model v1 (a name or folder, not "
                             "retrained) + the mean network of <out>/regression")
    parser.add_argument("--calibrate", action="store_true",
                        help="export: also fit std_scale on the validation scenes")
    parser.add_argument("--no-calibrate", action="store_true",
                        help="evaluate: keep the model's std_scale instead of fitting it first")
    parser.add_argument("--regression", type=Path, default=None, metavar="FILE",
                        help="evaluate: the regression baseline to score beside the model (default: "
                             "<out>/regression/regression.safetensors when it exists)")
    parser.add_argument("--export-real", type=Path, default=None, metavar="FILE.npz",
                        help="data: also save the training split of the real scene as a .npz (train from it "
                             "with --set data.real_path=FILE.npz on machines without GDAL)")
    parser.add_argument("--split", choices=("heldout", "val"), default="heldout",
                        help="evaluate-guided: the held-out south (default) or the northern validation area")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.stage in GUIDED:
        return _guided(args, argv)
    if args.stage in MULTIDATE:
        return _multidate(args, argv)
    cfg = TrainConfig.from_json(args.config)
    cfg = _override(cfg, args.overrides)
    run = {key: value for key, value in (("device", args.device), ("threads", args.threads)) if value is not None}
    if run:
        cfg = cfg.replace(run=run)
    if args.steps is not None:
        if args.stage not in TRAINED:
            raise SystemExit(f"--steps applies to the stages {', '.join(TRAINED)}")
        section, key = ("regression", "spread_steps") if args.stage == "spread" else (args.stage, "steps")
        cfg = cfg.replace(**{section: {key: args.steps}})
    run_dir = args.out if args.out is not None else Path("runs") / cfg.name
    model_dir = args.model_dir if args.model_dir is not None else run_dir / "model"
    progress = not args.no_progress

    if args.stage != "data":
        record_command(run_dir, argv)
    return _reported(lambda: _run_stage(args, cfg, run_dir, model_dir, progress))


def _run_stage(args: argparse.Namespace, cfg: TrainConfig, run_dir: Path, model_dir: Path, progress: bool) -> None:
    """The stage ``args.stage`` of the diffusion model's recipe ``cfg``."""
    if args.stage == "data":
        setup_logging(run_dir / "data" / "log.txt")
        if args.export_real is not None:
            from .data import export_real_split

            print(f"wrote {export_real_split(args.export_real, 'train', path=cfg.data_config().real_path)}")
        preview_data(cfg, run_dir / "data")
    elif args.stage in TRAINED:  # every stage: train_<stage>(cfg, run_dir, *, resume, stop_at, progress)
        from .autoencoder import train_autoencoder
        from .diffusion import train_diffusion
        from .regression import train_regression, train_spread

        train = dict(zip(TRAINED, (train_autoencoder, train_diffusion, train_regression, train_spread), strict=True))
        train[args.stage](cfg, run_dir, resume=args.resume, progress=progress)
    elif args.stage == "export":
        from .export import export_model, export_v2

        setup_logging(run_dir / "export.log")
        if args.base_model is not None:
            export_v2(cfg, run_dir, model_dir, args.base_model, overwrite=args.overwrite)
        else:
            export_model(cfg, run_dir, model_dir, overwrite=args.overwrite)
        if args.calibrate:
            from .evaluate import calibrate

            calibrate(cfg, run_dir, model_dir)
    else:
        from .evaluate import evaluate

        setup_logging(run_dir / "evaluate.log")
        evaluate(cfg, run_dir, model_dir, calibrate_first=not args.no_calibrate, progress=progress,
                 regression_path=args.regression)


def _reported(run: Callable[[], object]) -> int:
    """Run a stage: 0 when it ends, 130 on Ctrl-C (it can be resumed), 2 with one line for a known error."""
    try:
        run()
    except KeyboardInterrupt:
        print("interrupted: continue with --resume", file=sys.stderr)
        return 130
    except (FileNotFoundError, FileExistsError, OpenSRError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def _guided(args: argparse.Namespace, argv: list[str]) -> int:
    """The 20 m-band model's stages (``training.guided``; its own config file)."""
    import dataclasses

    from . import guided
    config = args.config if args.config != DEFAULT_CONFIG else guided.DEFAULT_CONFIG
    cfg = guided.GuidedTrainConfig.from_json(config)
    if args.steps is not None:
        cfg = dataclasses.replace(cfg, steps=args.steps)
    if args.threads is not None:  # as for the other stages: --threads overrides the config's
        cfg = dataclasses.replace(cfg, threads=args.threads)
    run_dir = args.out if args.out is not None else Path("runs") / cfg.name
    record_command(run_dir, argv)
    setup_logging(run_dir / f"{args.stage}.log")
    if args.stage == "guided":
        return _reported(lambda: guided.train_guided(cfg, run_dir, resume=args.resume, progress=not args.no_progress))
    model_dir = args.model_dir if args.model_dir is not None else run_dir / "guided" / "model"
    return _reported(lambda: guided.evaluate_guided(cfg, model_dir, split=args.split))


def _multidate(args: argparse.Namespace, argv: list[str]) -> int:
    """The multi-date model's stages (``training.multidate``): fit its parameters, evaluate it."""
    import torch

    from . import multidate
    torch.set_num_threads(args.threads or 1)
    run_dir = args.out if args.out is not None else Path("runs") / "multidate"
    record_command(run_dir, argv)
    setup_logging(run_dir / f"{args.stage}.log")
    model_dir = args.model_dir if args.model_dir is not None else run_dir / "model"
    if args.stage == "multidate":
        return _reported(lambda: multidate.fit(model_dir, progress=not args.no_progress))
    return _reported(lambda: multidate.evaluate(model_dir, run_dir / "evaluate"))


if __name__ == "__main__":
    sys.exit(main())
