"""The ``xr-opensr`` command line. Each sub-command is a function ``cmd_<name>(args) -> int``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .errors import OpenSRError

__all__ = ["main", "build_parser"]


def cmd_convert(args: argparse.Namespace) -> int:
    from .models import convert_checkpoint

    folder = convert_checkpoint(args.checkpoint, args.outdir, ema=args.ema, overwrite=args.overwrite)
    print(f"wrote model folder {folder} (load it with xr_opensr.load_model({str(folder)!r}))")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    import torch

    from . import __version__
    from .models import registered_models
    from .models.config import ModelConfig

    print(f"xr-opensr {__version__}, torch {torch.__version__}")
    cuda = torch.cuda.is_available()
    print(f"device: {'cuda (' + torch.cuda.get_device_name(0) + ')' if cuda else 'cpu'}")
    print("models:")
    for name, folder in registered_models().items():
        cfg = ModelConfig.from_json(folder / "config.json")
        print(f"  {name:10s} {cfg.name} {cfg.version}  patch {cfg.patch_size} px, {cfg.sampler.steps} steps  ({folder})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xr-opensr", description="4x super-resolution of Sentinel-2 with a latent diffusion model"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("convert", help="convert an LDSR-S2 v1 .ckpt into a model folder")
    p.add_argument("checkpoint", help="path to opensr-ldsrs2_v1_0_0.ckpt (read with weights_only=True)")
    p.add_argument("outdir", help="new folder for config.json + model.safetensors")
    p.add_argument("--ema", action=argparse.BooleanOptionalAction, default=None,
                   help="use the EMA UNet weights (default: the raw ones, as opensr-model does)")
    p.add_argument("--overwrite", action="store_true", help="replace the contents of an existing OUTDIR")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("info", help="versions, device and shipped models")
    p.set_defaults(func=cmd_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except OpenSRError as err:
        print(f"xr-opensr {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
