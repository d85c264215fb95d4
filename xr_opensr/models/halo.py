"""Measure a network's receptive-field halo, the context it needs around an output pixel (LR pixels).

A fully convolutional model declares ``ModelInfo.halo``; the graph then crops its patches instead of
blending them (``_graph.superresolve_array(..., crop=True, overlap=2 * halo)``), and each output pixel
is the network's value on the whole image only if every output pixel depends on input pixels within
``halo`` LR pixels of it. :func:`receptive_halo` measures that dependence; a declared halo must be
``>=`` what it returns (a test of the model should check it).

torch is imported only when :func:`receptive_halo` is called.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

__all__ = ["receptive_halo"]


def receptive_halo(module: Callable[[Any], Any], scale: int, probe: int = 64, *, channels: int | None = None,
                   seed: int = 0) -> int:
    """The receptive-field halo of a network, measured: LR pixels, rounded up, plus 1 for safety.

    The network runs without gradients, an ``nn.Module`` in eval mode on a float64 copy (the module
    itself is left as it is; if it cannot be copied or refuses float64: the module itself in its
    dtype, its train/eval mode restored after), on LR images (1, C, probe, probe): a zero image and
    a seeded random one in [0, 1), each as is and with the centre LR pixel (all channels) raised by 1.
    Every HR output pixel that changes by more than a rounding error lies in some LR pixel ``q``;
    the halo is the largest Chebyshev distance ``|q - centre|`` in LR pixels, plus 1 (the field of a
    network with strided layers depends a little on the position; the probe sees one).

    Parameters
    ----------
    module : the network, ``(1, C, n, n) LR tensor -> HR tensor (..., scale*n, scale*n)`` (or a tuple
        or list of them, e.g. a mean and a spread); an ``nn.Module`` or any callable.
    scale : HR pixels per LR pixel along an axis.
    probe : LR side of the probe image; at least ``2 * (halo + 2)``.
    channels : C; default: ``in_channels`` of the module's first ``Conv2d``.
    seed : of the random probe image.

    Returns
    -------
    int : a lower bound for a declared ``ModelInfo.halo``; ``overlap = 2 * halo`` for ``crop=True``.

    Raises
    ------
    ValueError : the change reaches the probe's border: the network is not local at this size (e.g.
        GroupNorm or attention over the whole image: declare ``halo=None``, blend its patches) or its
        field is larger than ``probe / 2`` (call again with a larger ``probe``).
    """
    import torch

    if probe < 8:
        raise ValueError(f"probe must be at least 8 LR pixels, got {probe}")
    if channels is None:
        channels = _in_channels(module, torch)
    centre = probe // 2
    gen = torch.Generator().manual_seed(seed)
    bases = [torch.zeros(1, channels, probe, probe, dtype=torch.float64),
             torch.rand(1, channels, probe, probe, generator=gen, dtype=torch.float64)]
    try:
        changed = _changed(*_float64_copy(module, torch), bases, centre, scale * probe)
    except (RuntimeError, TypeError):  # no float64 copy, or the network refuses float64: as it is
        changed = _changed_in_place(module, torch, bases, centre, scale * probe)
    if not bool(changed.any()):
        raise ValueError("the network's output does not change with its input: nothing to measure")
    ys, xs = torch.nonzero(changed, as_tuple=True)
    radius = int(max((ys // scale - centre).abs().max(), (xs // scale - centre).abs().max()))
    if radius >= probe - 1 - centre:  # the change reaches the probe's border
        raise ValueError(
            f"a change of one LR pixel reaches the border of the {probe} x {probe} probe: the network is not "
            f"local (declare ModelInfo(halo=None): its patches are blended) or its receptive field exceeds "
            f"{probe - 2 - centre} LR pixels (call receptive_halo(..., probe={2 * probe}))"
        )
    return radius + 1


def _changed(net: Callable[[Any], Any], dtype: Any, device: Any, bases: list, centre: int, side: int) -> Any:
    """(side, side) bool: the HR pixels where raising the centre LR pixel of a base image by 1 changes
    the network's output by more than a rounding error, for any of ``bases``."""
    import torch

    changed = torch.zeros(side, side, dtype=torch.bool)
    with torch.no_grad():
        for base in bases:
            bumped = base.clone()
            bumped[..., centre, centre] += 1.0
            out0 = _planes(net(base.to(device, dtype)), side)
            out1 = _planes(net(bumped.to(device, dtype)), side)
            diff = (out1 - out0).abs().amax(dim=0).cpu()
            tol = torch.finfo(dtype).eps * 1e3 * max(1.0, float(out0.abs().max()), float(diff.max()))
            changed |= diff > tol
    return changed


def _float64_copy(module: Any, torch: Any) -> tuple[Any, Any, Any]:
    """(callable, dtype, device): an eval-mode float64 copy of an ``nn.Module`` (the module is left
    as it is); a plain callable as it is, given float64."""
    if not isinstance(module, torch.nn.Module):
        return module, torch.float64, torch.device("cpu")
    param = next(iter(module.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    try:
        net = copy.deepcopy(module)
    except Exception as err:  # noqa: BLE001 - e.g. a module holding a handle
        raise TypeError(f"cannot copy the module: {err}") from err
    return net.to(dtype=torch.float64).eval(), torch.float64, device


def _changed_in_place(module: Any, torch: Any, bases: list, centre: int, side: int) -> Any:
    """:func:`_changed` with the module itself, in eval mode (its mode restored after), in its dtype."""
    if not isinstance(module, torch.nn.Module):
        return _changed(module, torch.float32, torch.device("cpu"), bases, centre, side)
    param = next(iter(module.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None else torch.float32
    training = module.training
    module.eval()
    try:
        return _changed(module, dtype, device, bases, centre, side)
    finally:
        module.train(training)


def _in_channels(module: Any, torch: Any) -> int:
    """``in_channels`` of the first ``Conv2d`` of ``module``."""
    if isinstance(module, torch.nn.Module):
        for m in module.modules():
            if isinstance(m, torch.nn.Conv2d):
                return int(m.in_channels)
    raise TypeError(f"cannot tell the input channels of {type(module).__name__}: pass receptive_halo(..., channels=C)")


def _planes(out: Any, side: int) -> Any:
    """The network's output(s) as (planes, side, side) float64: every tensor with HR spatial dims."""
    import torch

    outs = list(out.values()) if isinstance(out, dict) else list(out) if isinstance(out, (tuple, list)) else [out]
    planes = [o.detach().to(torch.float64).reshape(-1, *o.shape[-2:]) for o in outs
              if isinstance(o, torch.Tensor) and tuple(o.shape[-2:]) == (side, side)]
    if not planes:
        shapes = [tuple(o.shape) if isinstance(o, torch.Tensor) else type(o).__name__ for o in outs]
        raise ValueError(f"the network returned no HR tensor (..., {side}, {side}): got {shapes}; is scale right?")
    return torch.cat(planes)
