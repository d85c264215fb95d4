"""The model registry: the one way a model is found and loaded.

* **Kinds.** Every model folder's ``config.json`` says what it is with ``"kind"``: ``"ldm"`` (a latent
  diffusion model alone: LDSR-S2 v1, ``tiny``), ``"ldm+mean"`` (model v2: a mean network with a spread
  head composed with a diffusion model; the shipped ``default``), ``"guided-20m"`` (the 20 m-band
  model, ``s2-20m``) or ``"multidate"`` (the multi-date model on a v2 base, ``multidate``). :data:`KINDS` maps a kind to the loader of its folders. Folders written before
  ``"kind"`` existed are read by their structure (a guided model's ``"format"``, v2's ``"mean_net"``).
* **Names.** The shipped folders (``xr_opensr/weights/<name>``), the built-in baselines (``"bicubic"``,
  ``"bicubic+consistency"``: no weights) and models registered by other packages: an entry point in the
  group ``"xr_opensr.models"`` (name -> a callable returning the model, as xarray's backends do), or
  :func:`register` in-process. A path is a model folder, a ``.safetensors`` file beside its
  ``config.json`` or an LDSR-S2 v1 ``.ckpt``.

Every loader returns an object implementing :class:`xr_opensr.models.base.Model`, placed on the device.
Nothing here imports torch at import time.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from functools import lru_cache
from importlib import metadata, resources
from pathlib import Path
from typing import Any

from ..errors import CheckpointError, ConfigError, ModelError

__all__ = ["KINDS", "ENTRY_POINT_GROUP", "kind_of", "register", "registered_models", "load", "load_model", "names",
           "resolve"]

#: the entry-point group of third-party models: ``name = "package.module:loader"``; ``loader(device=...,
#: dtype=...)`` returns the model placed on the device
ENTRY_POINT_GROUP = "xr_opensr.models"

CONFIG_FILE = "config.json"

Loader = Callable[..., Any]


def _load_ldm(path: Path, device: Any, dtype: Any, ema: bool | None) -> Any:
    from .io import load_folder

    return load_folder(path).place(device, dtype)


def _load_guided(path: Path, device: Any, dtype: Any, ema: bool | None) -> Any:
    from .guided import load_guided

    return load_guided(path, device=device)


def _load_multidate(path: Path, device: Any, dtype: Any, ema: bool | None) -> Any:
    """A multi-date model folder (its ``config.json`` only) on its base model (a name, or a folder beside it)."""
    from .multidate import MultiDateConfig, MultiDateModel

    cfg = MultiDateConfig.from_json(path / CONFIG_FILE)
    base = path / cfg.base if (path / cfg.base).exists() else cfg.base
    return MultiDateModel(load(base, device=device, dtype=dtype), cfg)


#: kind -> loader ``(folder, device, dtype, ema) -> model`` of that kind's folders
KINDS: dict[str, Loader] = {"ldm": _load_ldm, "ldm+mean": _load_ldm, "guided-20m": _load_guided,
                            "multidate": _load_multidate}


def kind_of(config: Any, source: Path | str = "config.json") -> str:
    """The kind of a model config (the parsed ``config.json``): its ``"kind"``, else (configs written
    before kinds) read off its structure. ConfigError for anything else."""
    if not isinstance(config, Mapping):
        raise ConfigError(f"model config must be a JSON object, got {type(config).__name__} ({source}); write the "
                          "config.json that came with the weights")
    kind = config.get("kind")
    if kind is None:
        if config.get("format") == "xr-opensr-guided":
            return "guided-20m"
        return "ldm+mean" if config.get("mean_net") is not None else "ldm"
    if kind not in KINDS:
        raise ConfigError(f"model config {source}: unknown kind {kind!r}; known kinds: {sorted(KINDS)} "
                          "(a third-party kind is registered with xr_opensr.models.registry.KINDS[kind] = loader)")
    return kind


def _folder_kind(folder: Path) -> str:
    from .config import read_config_json

    if not (folder / CONFIG_FILE).is_file():
        raise CheckpointError(f"{folder} is not a model folder: {CONFIG_FILE} is missing (a model folder holds "
                              f"{CONFIG_FILE} and its *.safetensors weights, e.g. from `python -m training export`)")

    return kind_of(read_config_json(folder / CONFIG_FILE, "model config", "export the model again"),
                   folder / CONFIG_FILE)


# --------------------------------------------------------------------------- names

_REGISTERED: dict[str, Loader] = {}


def register(name: str, loader: Loader) -> None:
    """Register a model by name in this process: ``loader(device=..., dtype=...)`` returns it placed.
    (Other packages declare theirs as an entry point in the group :data:`ENTRY_POINT_GROUP`.)"""
    if not isinstance(name, str) or not name:
        raise ModelError(f"a model name must be a non-empty string, got {name!r}")
    _REGISTERED[name] = loader


@lru_cache(maxsize=1)
def _shipped() -> dict[str, tuple[Path, str]]:
    root = Path(str(resources.files("xr_opensr") / "weights"))
    return {p.name: (p, _folder_kind(p)) for p in sorted(root.iterdir()) if (p / CONFIG_FILE).is_file()}


def registered_models(kind: str | None = None) -> dict[str, Path]:
    """Shipped model names -> their folders; ``kind``: only those of that kind. Without ``kind``: the
    models that super-resolve the 10 m bands (``ldm``, ``ldm+mean`` and ``multidate``)."""
    wanted = (kind,) if kind is not None else ("ldm", "ldm+mean", "multidate")
    return {name: folder for name, (folder, k) in _shipped().items() if k in wanted}


def _entry_points() -> dict[str, Any]:
    return {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def names() -> list[str]:
    """Every model name :func:`load` knows: shipped, built in, registered and from entry points."""
    from .baselines import BASELINES

    return sorted({*_shipped(), *BASELINES, *_REGISTERED, *_entry_points()})


# --------------------------------------------------------------------------- loading


def load(model: Any = "default", *, device: Any = "auto", dtype: Any = None, ema: bool | None = None) -> Any:
    """Load a super-resolution model: the one loader of every kind (:class:`~xr_opensr.models.base.Model`).

    Parameters
    ----------
    model : a shipped name (``"default"``, ``"tiny"``, ``"s2-20m"``; :func:`registered_models`), a baseline
        (``"bicubic"``, ``"bicubic+consistency"``), a name registered by :func:`register` or an entry point,
        a model folder (``config.json`` with its ``"kind"`` + weights), a ``.safetensors`` file beside its
        ``config.json``, an LDSR-S2 v1 checkpoint (``.ckpt``, read with ``weights_only=True``), or a model object.
    device : "auto" (CUDA if available), "cpu", "cuda", "cuda:1" ...
    dtype : compute dtype of the denoiser: None/float32, or bfloat16/float16 on a GPU.
    ema : for ``.ckpt`` files, use the EMA UNet weights (True) or the raw ones (False); None means
        what the published opensr-model package does (raw weights).

    Raises ModelError (unknown name), CheckpointError (no such file or folder, unreadable weights),
    ConfigError (bad config), DeviceError (unknown device).
    """
    from .base import Model
    from .io import check_placement

    check_placement(device, dtype)  # unknown devices and dtypes: typed errors before anything is read
    if isinstance(model, Model):
        return model.place(device, dtype)
    if isinstance(model, str) and model in _REGISTERED:
        return _REGISTERED[model](device=device, dtype=dtype)
    if isinstance(model, str):
        from .baselines import BASELINES

        if model in BASELINES:
            return _baseline(model)
        eps = _entry_points()
        if model in eps and model not in _shipped():
            return eps[model].load()(device=device, dtype=dtype)
    path = resolve(model)
    if path.is_dir():
        return KINDS[_folder_kind(path)](path, device, dtype, ema)
    if path.suffix == ".safetensors":
        from .io import load_folder

        return load_folder(path.parent, weights=path).place(device, dtype)
    from .io import load_ldsr_checkpoint

    return load_ldsr_checkpoint(path, ema=ema).place(device, dtype)


def _baseline(name: str) -> Any:
    """A built-in baseline; ``"bicubic+consistency"`` takes the shipped default model's consistency step."""
    from .baselines import load_baseline

    consistency = None
    if name == "bicubic+consistency" and "default" in _shipped():
        from .config import ModelConfig

        consistency = ModelConfig.from_json(_shipped()["default"][0] / CONFIG_FILE).consistency
    return load_baseline(name, consistency)


#: the public name of :func:`load` (``xr_opensr.load_model``)
load_model = load


def resolve(model: Any) -> Path:
    """A shipped name or a path -> the model's folder or file (``"default"`` falls back to ``tiny``,
    with a warning, in an installation without it)."""
    if not isinstance(model, str | Path):
        raise ModelError(f"model must be a name, a path or a model object, got {type(model).__name__}")
    shipped = _shipped()
    if isinstance(model, str) and model in shipped:
        return shipped[model][0]
    if isinstance(model, str) and model == "default":
        warnings.warn(
            "no trained default model is shipped in this installation: using the 'tiny' model with "
            "seeded random weights, whose output is NOT a meaningful super-resolution",
            UserWarning,
            stacklevel=4,
        )
        return shipped["tiny"][0]
    path = Path(model).expanduser()
    if path.exists():
        return path
    if isinstance(model, str) and not any(sep in model for sep in "/\\") and "." not in model:
        raise ModelError(
            f"unknown model name {model!r}; registered models: {names()}; or pass a model folder or an LDSR-S2 "
            ".ckpt path"
        )
    raise CheckpointError(f"model file or folder not found: {path}")
