"""Spread-head designs on the frozen mean network of model 0.2.0, on validation data only.

Heads are trained (Laplace NLL, 1500 steps, batch 16) on features of the frozen mean network for 70 %
of the real scene's north tiles (randomised sensor) and N synthetic training scenes, and scored by
Spearman(std, |error|) on the other 30 % of the north tiles (default sensor) and 16 synthetic
validation scenes; the shipped head and the bicubic-gradient map for comparison. How model 0.2.1's head
(3 convolutions of 64 channels, with the detail inputs) was chosen; never the held-out south part.

    python benchmarks/spread_head_experiment.py 800 --model /path/to/model-0.2.0    (~20 min, 1 thread)
"""

import argparse
import math
import sys
import time

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
torch.set_num_threads(1)

import xr_opensr  # noqa: E402
from training.config import TrainConfig  # noqa: E402
from training.data import real_pairs, synthetic_pairs  # noqa: E402
from training.evaluate import fixed_sensor  # noqa: E402
from training.loop import PairSampler  # noqa: E402
from xr_opensr import metrics as M  # noqa: E402
from xr_opensr.models.consistency import enforce_consistency  # noqa: E402
from xr_opensr.sensor import bicubic_upsample  # noqa: E402

_p = argparse.ArgumentParser()
_p.add_argument("synthetic", type=int, nargs="?", default=800)
_p.add_argument("--model", default="default")
ARGS = _p.parse_args()
cfg = TrainConfig.from_json(
    str(__import__("pathlib").Path(__file__).resolve().parents[1] / "training/configs/v2.json")
)
v2 = xr_opensr.load_model(ARGS.model, device="cpu")
mn = v2.mean_net.eval()
HR = cfg.hr_patch


def items(pairs):
    return [a.numpy() for a in PairSampler(pairs).items(list(range(len(pairs))))]


@torch.no_grad()
def prep(hr, lr):
    feats, means = [], []
    for a in range(0, len(lr), 32):
        lr_t = torch.from_numpy(lr[a : a + 32])
        b = torch.from_numpy(bicubic_upsample(lr[a : a + 32], 4).astype(np.float32))
        f = mn.features(lr_t)
        m = b + mn.shuffle(mn.up(f)) / mn.gain
        m = enforce_consistency(m.numpy(), lr[a : a + 32], 4, v2.config.consistency)
        feats.append(f.numpy())
        means.append(m)
    mean = np.concatenate(means)
    bic = bicubic_upsample(lr, 4).astype(np.float32)
    return dict(feat=np.concatenate(feats), mean=mean, hr=hr, lr=lr, bic=bic)


t0 = time.time()
real_rand = real_pairs(cfg.data_config(), cfg.degradation_config(), hr_size=HR, split="train")
real_fix = real_pairs(
    cfg.data_config(), fixed_sensor(cfg).degradation_config(), hr_size=HR, split="train"
)
n = len(real_rand)
ntr = int(0.7 * n)
print("north tiles", n, flush=True)
Rr = items(real_rand)
Rf = items(real_fix)
train_real = prep(Rr[0][:ntr], Rr[1][:ntr])
val_real = prep(Rf[0][ntr:], Rf[1][ntr:])
syn_tr = items(
    synthetic_pairs(
        cfg.data_config(),
        cfg.degradation_config(),
        hr_size=HR,
        seeds=range(20000, 20000 + ARGS.synthetic),
    )
)
train_syn = prep(*syn_tr)
vs = range(cfg.evaluate.validation_seed, cfg.evaluate.validation_seed + 16)
val_syn = prep(
    *items(synthetic_pairs(cfg.data_config(), cfg.degradation_config(), hr_size=HR, seeds=vs))
)
print("prep", time.time() - t0, flush=True)


def extra(d):
    # residual the network added, and bicubic gradient, brought to LR grid by pixel-unshuffle
    res = torch.from_numpy(np.abs(d["mean"] - d["bic"]))
    g = torch.from_numpy(M.gradient_magnitude(d["bic"]).astype(np.float32))
    return torch.cat([F.pixel_unshuffle(res, 4), F.pixel_unshuffle(g, 4)], 1) * 30.0


for d in (train_real, val_real, train_syn, val_syn):
    d["extra"] = extra(d).numpy()


class Head(nn.Module):
    def __init__(self, cin, u, depth):
        super().__init__()
        layers = [nn.Conv2d(cin, u, 3, padding=1), nn.ReLU()]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(u, u, 3, padding=1), nn.ReLU()]
        layers += [nn.Conv2d(u, 64, 3, padding=1), nn.PixelShuffle(4)]
        self.net = nn.Sequential(*layers)
        nn.init.zeros_(layers[-2].weight)
        nn.init.constant_(layers[-2].bias, math.log(math.expm1(0.01)))

    def forward(self, x):
        return F.softplus(self.net(x)) + 1e-5


def inputs(d, use_extra, idx):
    f = torch.from_numpy(d["feat"][idx])
    return torch.cat([f, torch.from_numpy(d["extra"][idx])], 1) if use_extra else f


def aug(x, k, fl):
    x = torch.rot90(x, k, (-2, -1))
    return x.flip(-1) if fl else x


def train(use_extra, u, depth, steps=1500, real_w=0.5):
    torch.manual_seed(0)
    h = Head(32 + (128 if use_extra else 0), u, depth)
    opt = torch.optim.Adam(h.parameters(), lr=1e-3)
    rng = np.random.default_rng(0)
    for s in range(steps):
        for g in opt.param_groups:
            g["lr"] = 1e-3 * 0.5 * (1 + math.cos(math.pi * s / steps))
        d = train_real if rng.random() < real_w else train_syn
        idx = rng.integers(0, len(d["hr"]), 16)
        x = inputs(d, use_extra, idx)
        e = torch.from_numpy(d["hr"][idx] - d["mean"][idx])
        k, fl = int(rng.integers(4)), bool(rng.integers(2))
        b = h(aug(x, k, fl))
        e = aug(e, k, fl)
        loss = (e.abs() / b + torch.log(b)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return h


@torch.no_grad()
def score(h, use_extra, d):
    b = h(inputs(d, use_extra, slice(None))).numpy() if h is not None else None
    return b


def report(name, fn):
    out = []
    for vname, d in (("val_real", val_real), ("val_syn", val_syn), ("train_real", train_real)):
        std = fn(d)
        err = d["mean"] - d["hr"]
        out.append(f"{vname} {M.uncertainty_calibration(std, err)['spearman']:.4f}")
    print(f"{name:28s}", " ".join(out), flush=True)


report("gradient", lambda d: M.gradient_magnitude(d["bic"]))
with torch.no_grad():
    report("shipped head", lambda d: mn.spread(torch.from_numpy(d["feat"])).numpy())
for use_extra, u, depth, rw in [
    (False, 32, 2, 0.5),
    (False, 64, 4, 0.5),
    (True, 64, 3, 0.5),
    (True, 64, 3, 0.8),
]:
    t = time.time()
    h = train(use_extra, u, depth, real_w=rw)
    report(f"head extra={use_extra} u{u} d{depth} rw{rw}", lambda d, h=h, e=use_extra: score(h, e, d))
    print("  train s", round(time.time() - t), flush=True)
