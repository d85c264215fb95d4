"""How well two v2 models' spreads rank and cover the errors of their mean, on validation data only.

The same validation sets as ``benchmarks/v2_choices.py`` (synthetic validation scenes 1,000,000+
through the default and the randomised training sensor, and crops of the real scene's north part);
never the test, held-out or unseen-domain sets. Prints, per set, the bicubic-gradient map's
Spearman(·, |error|) and, per model, the spread's Spearman, its ±2 std coverage and the mean's PSNR.

    python benchmarks/spread_heads.py /path/to/model-0.2.0 xr_opensr/weights/default
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", help="model v2 folders or registered names")
    parser.add_argument("--config", default=str(ROOT / "training" / "configs" / "v2.json"))
    parser.add_argument("--items", type=int, default=16)
    args = parser.parse_args()

    from v2_choices import _sets

    import xr_opensr
    from training.config import TrainConfig
    from xr_opensr import metrics as M

    torch.set_num_threads(1)
    cfg = TrainConfig.from_json(args.config)
    nets = {name: xr_opensr.load_model(name, device="cpu") for name in args.models}
    for set_name, (hr, lr) in _sets(cfg, args.items).items():
        hr_np, lr_np = hr.numpy(), lr.numpy()
        ok = torch.zeros(lr.shape[0], *lr.shape[-2:], dtype=torch.bool)
        cells = []
        for name, net in nets.items():
            mean, unit = net.mean_and_spread(lr, ok)
            cal = M.uncertainty_calibration(unit * net.config.std_scale, mean - hr_np)
            cells.append(f"{name}: Spearman {cal['spearman']:.4f}, coverage {cal['coverage_2std']:.3f}, "
                         f"PSNR {M.psnr(mean, hr_np):.3f}")
        gradient = M.gradient_magnitude(M.bicubic_upsample(lr_np, 4))
        g = M.uncertainty_calibration(gradient, np.asarray(mean) - hr_np)["spearman"]
        print(f"{set_name}: gradient map {g:.4f} | " + " | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
