"""The LPIPS networks behind :func:`xr_opensr.metrics.lpips`: built from local weights, never downloaded.

Imports torch (and ``lpips`` / ``stlpips-pytorch``) only inside functions.
"""

from __future__ import annotations

import functools
import importlib.util
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .sentinel2 import RGB_BANDS

#: the RGB bands LPIPS sees, in R, G, B order
LPIPS_BANDS = RGB_BANDS
#: LPIPS networks this module builds (none of them downloads anything)
LPIPS_NETS = {
    "auto": "lpips-alex if the ImageNet AlexNet is in $TORCH_HOME/hub/checkpoints, else stlpips-alex",
    "lpips-alex": "LPIPS v0.1, AlexNet ImageNet trunk from the local torch hub cache, linear layers from lpips",
    "lpips-vgg": "LPIPS v0.1, VGG16 ImageNet trunk from the local torch hub cache, linear layers from lpips",
    "stlpips-alex": "shift-tolerant LPIPS (AlexNet), all weights shipped inside stlpips-pytorch",
    "stlpips-vgg": "shift-tolerant LPIPS (VGG16), all weights shipped inside stlpips-pytorch",
}
_TRUNK_FILES = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth"}


def _trunk_cache(trunk: str) -> Path:
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints" / _TRUNK_FILES[trunk]


def _resolve_lpips_net(net: str) -> str:
    if net not in LPIPS_NETS:
        raise ValueError(f"unknown LPIPS net {net!r}; choose one of {sorted(LPIPS_NETS)}")
    if net != "auto":
        return net
    try:
        cached = _trunk_cache("alex").is_file() and importlib.util.find_spec("lpips") is not None
    except ImportError as err:
        raise ImportError("lpips needs torch: pip install 'xr-opensr[train]'") from err
    return "lpips-alex" if cached else "stlpips-alex"


def lpips_network(name: str, device: str = "cpu"):
    """A fresh, frozen (eval mode, no gradients) LPIPS network ``name`` of :data:`LPIPS_NETS` (not "auto").

    The module that :func:`lpips` uses, for callers that need it as a ``torch.nn.Module`` (e.g. a
    perceptual training loss). It takes two (B, 3, H, W) tensors in [-1, 1] and returns (B, 1, 1, 1)
    distances. Never downloads; raises FileNotFoundError / ImportError as :func:`lpips` explains.
    """
    if name not in LPIPS_NETS or name == "auto":
        raise ValueError(f"unknown LPIPS net {name!r}; choose one of {sorted(set(LPIPS_NETS) - {'auto'})}")
    return _lpips_model(name, device)


@functools.lru_cache(maxsize=4)
def _shared_lpips_model(name: str, device: str):
    """The instance :func:`lpips` reuses; never handed out (callers may move or wrap what they get)."""
    return _lpips_model(name, device)


def _lpips_model(name: str, device: str = "cpu"):
    import torch

    family, trunk = name.split("-")
    if family == "lpips":
        cache = _trunk_cache(trunk)
        if not cache.is_file():
            raise FileNotFoundError(
                f"LPIPS net {name!r} needs the torchvision ImageNet weights at {cache} (never downloaded "
                "here); put the file there, or call lpips(..., net='stlpips-alex')"
            )
        try:
            import lpips as lpips_pkg
        except ImportError as err:
            raise ImportError(f"LPIPS net {name!r} needs the lpips package: pip install 'xr-opensr[train]'") from err
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            # pnet_rand=True: torchvision builds the trunk without asking for a download
            model = lpips_pkg.LPIPS(pretrained=True, net=trunk, version="0.1", pnet_rand=True, verbose=False)
        state = torch.load(cache, map_location="cpu", weights_only=True)
        features = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
        mapped = {}
        for slice_name, module in model.net.named_children():
            for idx in dict(module.named_children()):
                for key, value in features.items():
                    if key.split(".")[0] == idx:
                        mapped[f"{slice_name}.{key}"] = value
        model.net.load_state_dict(mapped, strict=True)
    else:
        if importlib.util.find_spec("stlpips_pytorch") is None:
            raise ImportError(f"LPIPS net {name!r} needs stlpips-pytorch: pip install 'xr-opensr[train]'")
        with _PlaceholderModules({"torchsummary": ["summary"], "IPython": ["embed"]}):
            from stlpips_pytorch import stlpips
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            model = stlpips.LPIPS(pretrained=False, net=trunk, variant="shift_tolerant", pnet_rand=True,
                                  verbose=False, eval_mode=True)
        weights = Path(stlpips.__file__).parent / "weights" / "vST0.0" / f"{trunk}_shift_tolerant.pth"
        result = model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True), strict=False)
        missing = [k for k in result.missing_keys if not k.startswith("lins.")]  # lins.N alias linN
        if missing or result.unexpected_keys:
            raise RuntimeError(f"{weights} does not fit ST-LPIPS {trunk}: missing {missing}, "
                               f"unexpected {result.unexpected_keys}")
    for param in model.parameters():
        param.requires_grad_(False)
    return model.eval().to(device)


class _PlaceholderModules:
    """Make the unused, undeclared imports of stlpips-pytorch 0.0.2 importable while it is imported."""

    def __init__(self, names: dict[str, list[str]]) -> None:
        self.names, self.added = names, []

    def __enter__(self) -> None:
        import sys
        import types

        for name, attrs in self.names.items():
            if name in sys.modules or importlib.util.find_spec(name) is not None:
                continue
            module = types.ModuleType(name)
            for attr in attrs:
                setattr(module, attr, _unavailable(name, attr))
            sys.modules[name] = module
            self.added.append(name)

    def __exit__(self, *exc: object) -> None:
        import sys

        for name in self.added:
            sys.modules.pop(name, None)


def _unavailable(module: str, attr: str) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"{module}.{attr} is a placeholder (not installed)")

    return call
