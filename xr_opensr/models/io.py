"""Model files: load/save model folders, convert LDSR-S2 v1 checkpoints, registered names.

A model folder holds ``config.json`` (:class:`ModelConfig`) and ``model.safetensors`` (the state
dict of :class:`SRModel`: ``autoencoder.*`` and ``denoiser.*``). Checkpoints (``.ckpt``) are read
with ``torch.load(weights_only=True)`` only: no code inside them ever runs.

:func:`load_network` is the one loading path of every model kind (the diffusion models, model v2's
mean network, the 20 m model of :mod:`~xr_opensr.models.guided`): the shapes in the safetensors
headers against the network built on torch's meta device, then the tensors, finite, loaded strictly.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import CheckpointError, ConfigError, DeviceError, ModelError
from . import baselines as _baselines
from .autoencoder import AutoencoderConfig
from .config import ModelConfig
from .consistency import ConsistencyConfig
from .diffusion import SamplerConfig, ScheduleConfig
from .pipeline import SRModel, resolve_device, resolve_dtype
from .unet import UNetConfig

__all__ = [
    "load_model",
    "load_network",
    "save_model",
    "convert_checkpoint",
    "read_checkpoint",
    "ldsr_s2_v1_config",
    "tiny_config",
    "seeded_model",
    "registered_models",
    "CONFIG_FILE",
    "WEIGHTS_FILE",
    "MEAN_NET_FILE",
]

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "MODEL_CARD.md"
#: model v2's mean network, beside the diffusion networks' file
MEAN_NET_FILE = "mean_net.safetensors"
_MEAN_NET_PREFIX = "mean_net."

# --------------------------------------------------------------------------- registry


def _weights_root() -> Path:
    return Path(str(resources.files("xr_opensr") / "weights"))


def registered_models() -> dict[str, Path]:
    """Names of the diffusion models shipped in the package -> their folders (guided 20 m-band
    models, ``models.guided``, have their own loader and are left out)."""
    root = _weights_root()
    return {p.name: p for p in sorted(root.iterdir())
            if (p / CONFIG_FILE).is_file() and '"xr-opensr-guided"' not in (p / CONFIG_FILE).read_text()}


def ldsr_s2_v1_config(**changes) -> ModelConfig:
    """Architecture and defaults of ESA OpenSR's LDSR-S2 v1 (``opensr-ldsrs2_v1_0_0.ckpt``)."""
    cfg = ModelConfig(
        name="ldsr-s2",
        version="1.0.0",
        patch_size=128,
        default_overlap=16,
        conditioning="sample",
        autoencoder=AutoencoderConfig(
            in_channels=4, out_ch=4, ch=128, ch_mult=(1, 2, 4), num_res_blocks=2, attn_resolutions=(),
            z_channels=4, embed_dim=4, double_z=True, resolution=512, dropout=0.0,
        ),
        denoiser=UNetConfig(
            in_channels=8, out_channels=4, model_channels=160, channel_mult=(1, 2, 2, 4), num_res_blocks=2,
            attention_resolutions=(16, 8), num_head_channels=32, image_size=128,
        ),
        schedule=ScheduleConfig(timesteps=1000, linear_start=1e-4, linear_end=1e-2),
        sampler=SamplerConfig(steps=100, eta=0.95, temperature=1.0),
        provenance={
            "source": "ESA OpenSR LDSR-S2 v1 (opensr-model 1.0.x), converted with `xr-opensr convert`",
            "reference": "Donike et al., ESA OpenSR; https://github.com/ESAOpenSR/opensr-model",
        },
    )
    return cfg.replace(**changes) if changes else cfg


def tiny_config(**changes) -> ModelConfig:
    """A very small model of the same family, for tests and smoke runs (a few ms per patch)."""
    cfg = ModelConfig(
        name="tiny",
        version="0.1.0",
        patch_size=16,
        default_overlap=4,
        conditioning="mode",
        autoencoder=AutoencoderConfig(
            ch=8, ch_mult=(1, 2, 4), num_res_blocks=1, attn_resolutions=(), resolution=64, num_groups=4,
        ),
        denoiser=UNetConfig(
            model_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(2,),
            num_head_channels=8, image_size=16, num_groups=4,
        ),
        schedule=ScheduleConfig(timesteps=1000, linear_start=1e-4, linear_end=1e-2),
        sampler=SamplerConfig(steps=4, eta=0.95, temperature=1.0),
        provenance={"source": "seeded random weights (not trained): for tests only, output is not meaningful"},
    )
    return cfg.replace(**changes) if changes else cfg


def seeded_model(config: ModelConfig, seed: int = 0) -> SRModel:
    """Untrained model with reproducible random weights (zero-initialised layers filled too).

    The shipped ``tiny`` model is ``seeded_model(tiny_config(), 0)``.
    """
    torch.manual_seed(seed)
    net = SRModel(config)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in net.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return net.eval()


# --------------------------------------------------------------------------- loading


def load_model(
    model: str | Path | SRModel = "default",
    *,
    device: str | torch.device | None = "auto",
    dtype: str | torch.dtype | None = None,
    ema: bool | None = None,
) -> SRModel:
    """Load a super-resolution model.

    Parameters
    ----------
    model : a registered name (``"default"``, ``"tiny"``; see :func:`registered_models`), a baseline
        (``"bicubic"``, ``"bicubic+consistency"``; :mod:`~xr_opensr.models.baselines`), a model
        folder (``config.json`` + ``model.safetensors``), a ``.safetensors`` file beside its
        ``config.json``, or an LDSR-S2 v1 checkpoint (``.ckpt``, read with ``weights_only=True``).
    device : "auto" (CUDA if available), "cpu", "cuda", "cuda:1" ...
    dtype : compute dtype of the denoiser: None/float32, or bfloat16/float16 on a GPU.
    ema : for ``.ckpt`` files, use the EMA UNet weights (True) or the raw ones (False); None means
        what the published opensr-model package does (raw weights).
    """
    if isinstance(model, str) and model in _baselines.BASELINES:  # "bicubic", "bicubic+consistency"
        return _baselines.load_baseline(model, _default_consistency() if model == "bicubic+consistency" else None)
    _check_placement(device, dtype)  # before anything is read or built
    if isinstance(model, SRModel):
        return model.place(device, dtype)
    path = _resolve(model)
    if path.is_dir():
        net = _load_folder(path)
    elif path.suffix == ".safetensors":
        net = _load_folder(path.parent, weights=path)
    else:
        net = _from_state_dict(ldsr_s2_v1_config(), read_checkpoint(path), ema=ema, source=path)
    return net.place(device, dtype)


def _default_consistency() -> ConsistencyConfig:
    """The consistency step of the shipped default model (read from its config.json, no weights), the
    step of the ``"bicubic+consistency"`` baseline."""
    folder = registered_models().get("default")
    if folder is None:  # an installation without the trained default: its documented step
        return _baselines.DEFAULT_CONSISTENCY
    return ModelConfig.from_json(folder / CONFIG_FILE).consistency


def _check_placement(device: object, dtype: object) -> None:
    """Unknown device strings and dtypes are typed errors naming the valid values."""
    try:
        dev = resolve_device(device)
    except DeviceError:
        raise
    except (RuntimeError, TypeError, ValueError) as err:  # torch.device("potato")
        raise DeviceError(
            f"device={device!r} is not a device: use 'auto' (CUDA if available), 'cpu', 'cuda' or 'cuda:N' "
            f"(N = GPU index), or a torch.device ({str(err).splitlines()[0][:120]})"
        ) from err
    resolve_dtype(dtype, dev)


def _resolve(model: str | Path) -> Path:
    if not isinstance(model, str | Path):
        raise ModelError(f"model must be a name, a path or an SRModel, got {type(model).__name__}")
    names = registered_models()
    if isinstance(model, str) and model in names:
        return names[model]
    if isinstance(model, str) and model == "default":
        warnings.warn(
            "no trained default model is shipped in this installation: using the 'tiny' model with "
            "seeded random weights, whose output is NOT a meaningful super-resolution",
            UserWarning,
            stacklevel=3,
        )
        return names["tiny"]
    path = Path(model).expanduser()
    if path.exists():
        return path
    if isinstance(model, str) and not any(sep in model for sep in "/\\") and "." not in model:
        raise ModelError(
            f"unknown model name {model!r}; registered models: {sorted(names)}; "
            "or pass a model folder or an LDSR-S2 .ckpt path"
        )
    raise CheckpointError(f"model file or folder not found: {path}")


def _load_folder(folder: Path, weights: Path | None = None) -> SRModel:
    cfg_path = folder / CONFIG_FILE
    weights = weights or folder / WEIGHTS_FILE
    if not cfg_path.is_file():
        raise CheckpointError(f"{folder} is not a model folder: {CONFIG_FILE} is missing")
    if not weights.is_file():
        raise CheckpointError(f"weights file missing: {weights} (a model folder needs {WEIGHTS_FILE})")
    config = ModelConfig.from_json(cfg_path)
    files = {weights: ""}
    if config.mean_net is not None and not any(k.startswith(_MEAN_NET_PREFIX) for k in _header_shapes(weights)):
        mean_file = folder / MEAN_NET_FILE  # model v2: the mean network in a file of its own
        if not mean_file.is_file():
            raise CheckpointError(f"{folder}: config.json has a mean_net but {MEAN_NET_FILE} is missing; "
                                  "export the model again (`python -m training export --base-model ...`)")
        files[mean_file] = _MEAN_NET_PREFIX
    return load_network(lambda: SRModel(config), files, model=config.name, config_path=cfg_path)


# --------------------------------------------------------------------------- the one loading path


def load_network(build: Callable[[], nn.Module], files: Mapping[Path, str], *, model: str,
                 config_path: Path | None = None) -> nn.Module:
    """The one loading path of every model kind (diffusion models, model v2's mean network, the 20 m model).

    1. The tensor names and shapes in the safetensors headers of ``files`` are compared with those of the
       network ``build()`` returns, built on torch's meta device: a config that does not fit its weights
       fails in a fraction of a second, before any memory is allocated or any tensor is read.
    2. The tensors are read and must be finite.
    3. The network is built and loaded strictly (every tensor, no other).

    Parameters
    ----------
    build : makes the network of the config (called once on the meta device, once for real).
    files : safetensors file -> the prefix of its tensors in the network's state dict (``""``: none;
        model v2's ``mean_net.safetensors``: ``"mean_net."``). Errors name the file a tensor is in.
    model : the model's name, for the messages.
    config_path : the config file, for the messages.

    Returns
    -------
    The network in eval mode, on the CPU. Raises ConfigError (no network can be built) or
    CheckpointError (unreadable weights, keys or shapes that do not fit, NaN/inf values).
    """
    found: dict[str, tuple[int, ...]] = {}
    for path, prefix in files.items():
        found.update({prefix + k: v for k, v in _header_shapes(path).items()})
    _check_shapes(model, _network_shapes(build, config_path or model), found, files, config_path)
    state: dict[str, torch.Tensor] = {}
    for path, prefix in files.items():
        state.update({prefix + k: v for k, v in _read_weights(path).items()})
    return _build_loaded(build, state, model=model, files=files)


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"cannot read weights {path}: {err}; the file is corrupt or not safetensors") from err


def _header_shapes(weights: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape, from the safetensors header alone (the tensors stay on disk)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(weights), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 (not a dict)
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"cannot read weights {weights}: {err}; the file is corrupt or not safetensors") from err


def _network_shapes(build: Callable[[], nn.Module], source: Path | str) -> dict[str, tuple[int, ...]]:
    """State-dict key -> shape of the network ``build()`` makes, built on the meta device (no memory)."""
    try:
        with torch.device("meta"):
            net = build()
    except (ValueError, RuntimeError, TypeError, ZeroDivisionError, AssertionError) as err:
        raise ConfigError(f"model config {source} describes no network that can be built: {err}") from err
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


def _owner(key: str, files: Mapping[Path, str]) -> tuple[Path, str]:
    """(file, prefix) of the file that holds (or should hold) state-dict key ``key``: the longest prefix wins."""
    candidates = [(p, pre) for p, pre in files.items() if key.startswith(pre)] or list(files.items())[:1]
    return max(candidates, key=lambda item: len(item[1]))


def _check_shapes(model: str, expected: Mapping[str, tuple[int, ...]], found: Mapping[str, tuple[int, ...]],
                  files: Mapping[Path, str], config_path: Path | None = None) -> None:
    """Raise CheckpointError unless ``found`` has exactly the keys and shapes of ``expected``; the message
    names, per weights file, the keys as that file holds them."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong = sorted(k for k in set(expected) & set(found) if tuple(expected[k]) != tuple(found[k]))
    if not (missing or unexpected or wrong):
        return
    config = f"the config of model {model!r}" + (f" ({config_path})" if config_path is not None else "")
    texts = []
    for path, prefix in files.items():
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            keys = [k for k in keys if _owner(k, files)[0] == path]
            if not keys:
                continue
            shown = ", ".join(
                f"{k[len(prefix):]} {tuple(found[k])} != config {tuple(expected[k])}" if label == "wrong shape"
                else k[len(prefix):] for k in keys[:5]
            )
            parts.append(f"{len(keys)} {label} keys: {shown}" + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else ""))
        if parts:
            texts.append(f"weights {path} do not fit {config}: " + "; ".join(parts))
    raise CheckpointError("; ".join(texts) + ". Use the config.json written with these weights.")


def _build_loaded(build: Callable[[], nn.Module], state: Mapping[str, torch.Tensor], *, model: str,
                  files: Mapping[Path, str]) -> nn.Module:
    """``state`` (keys and shapes already checked) checked finite, then the network built and loaded strictly."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    for path, prefix in files.items():
        here = [k[len(prefix):] for k in bad if _owner(k, files)[0] == path]
        if here:
            shown = ", ".join(here[:5]) + (f" (+{len(here) - 5} more)" if len(here) > 5 else "")
            raise CheckpointError(
                f"weights {path} hold NaN or infinite values in {len(here)} tensors ({shown}): every output of "
                f"model {model!r} would be NaN. The file is corrupt or comes from a diverged training run; "
                "export or download it again"
            )
    net = build()
    try:
        net.load_state_dict(dict(state), strict=True)
    except RuntimeError as err:  # keys and shapes were checked: a network that builds differently each time
        raise CheckpointError(f"weights {', '.join(map(str, files))} do not fit model {model!r}: "
                              f"{str(err)[:300]}") from err
    return net.eval()


def save_model(net: SRModel, folder: str | Path, *, card: str | None = None, overwrite: bool = False) -> Path:
    """Write ``config.json`` + ``model.safetensors`` (+ ``MODEL_CARD.md``) into ``folder``; model v2's
    mean network goes to ``mean_net.safetensors`` (so a v2 built on a v1's networks shares their file)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()) and not overwrite:
        raise ModelError(f"{folder} exists and is not empty; choose a new folder or pass overwrite=True")
    folder.mkdir(parents=True, exist_ok=True)
    net.config.to_json(folder / CONFIG_FILE)
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in net.state_dict().items()}
    mean = {k[len(_MEAN_NET_PREFIX):]: state.pop(k) for k in list(state) if k.startswith(_MEAN_NET_PREFIX)}
    save_file(state, str(folder / WEIGHTS_FILE), metadata={"format": "pt", "name": net.config.name})
    if mean:
        save_file(mean, str(folder / MEAN_NET_FILE), metadata={"format": "pt", "name": net.config.name})
    if card is not None:
        (folder / CARD_FILE).write_text(card)
    return folder


# --------------------------------------------------------------------------- checkpoints

# The one place that knows how LDSR-S2 v1 checkpoint keys map onto SRModel's.
_CKPT_AUTOENCODER = "first_stage_model."
_CKPT_UNET = "model.diffusion_model."
_CKPT_EMA = "model_ema."
_CKPT_SCHEDULE = "alphas_cumprod"


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The ``state_dict`` of a PyTorch (Lightning) checkpoint, read without running pickled code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError ... for bad files
        text = str(err)
        if "Unsupported global" in text or "GLOBAL " in text:
            raise CheckpointError(
                f"refusing to load {path}: it needs arbitrary pickled code to load, which xr-opensr never "
                "runs. Re-save only its tensors, e.g. torch.save({'state_dict': sd}, 'clean.ckpt'), "
                "in an environment you trust"
            ) from err
        detail = text.split("WeightsUnpickler error:")[-1].strip().splitlines()[0] if text.strip() else ""
        raise CheckpointError(
            f"cannot read checkpoint {path}: the file is corrupt or not a PyTorch checkpoint "
            f"({err.__class__.__name__}: {detail[:200]})"
        ) from err
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} holds no state dict of tensors (expected a 'state_dict' entry)")
    return dict(state)


def checkpoint_to_state(
    state: Mapping[str, torch.Tensor], denoiser_keys: list[str], ema: bool | None = None
) -> dict[str, torch.Tensor]:
    """Map LDSR-S2 v1 checkpoint keys onto SRModel keys.

    ``first_stage_model.*`` -> ``autoencoder.*``; ``model.diffusion_model.*`` (or, with ``ema=True``,
    ``model_ema.*`` whose names have their dots removed) -> ``denoiser.*``. Perceptual-loss
    tensors, the EMA bookkeeping and schedule buffers are dropped.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith(_CKPT_AUTOENCODER):
            out["autoencoder." + key[len(_CKPT_AUTOENCODER):]] = value
        elif key.startswith(_CKPT_UNET) and not ema:
            out["denoiser." + key[len(_CKPT_UNET):]] = value
    if ema:
        flat = {k[len(_CKPT_EMA):]: v for k, v in state.items() if k.startswith(_CKPT_EMA)}
        if not flat:
            raise CheckpointError("ema=True but the checkpoint has no model_ema.* weights; use ema=False")
        for key in denoiser_keys:
            squashed = ("diffusion_model." + key).replace(".", "")
            if squashed in flat:
                out["denoiser." + key] = flat[squashed]
    return out


def _schedule_from_checkpoint(state: Mapping[str, torch.Tensor], cfg: ScheduleConfig) -> ScheduleConfig:
    """Read linear_start/linear_end off the checkpoint's schedule buffers and check they are linear."""
    if "betas" not in state:
        return cfg
    betas = state["betas"].double().numpy()
    fitted = ScheduleConfig(
        timesteps=len(betas), linear_start=float(np.round(betas[0], 8)), linear_end=float(np.round(betas[-1], 8)),
    )
    from .diffusion import NoiseSchedule

    if not np.allclose(NoiseSchedule(fitted).betas, betas, rtol=1e-4, atol=1e-9):
        raise CheckpointError("the checkpoint's beta schedule is not the LDM 'linear' schedule; cannot convert it")
    return fitted


def _from_state_dict(
    config: ModelConfig, state: Mapping[str, torch.Tensor], *, ema: bool | None, source: Path | str
) -> SRModel:
    config = config.replace(schedule=_schedule_from_checkpoint(state, config.schedule))
    prov = dict(config.provenance, checkpoint=str(Path(source).name), unet_weights="ema" if ema else "raw")
    config = config.replace(provenance=prov)
    expected = _network_shapes(lambda: SRModel(config), source)
    denoiser_keys = [k[len("denoiser."):] for k in expected if k.startswith("denoiser.")]
    mapped = checkpoint_to_state(state, denoiser_keys, ema=ema)
    files = {Path(source): ""}
    _check_shapes(config.name, expected, {k: tuple(v.shape) for k, v in mapped.items()}, files)
    return _build_loaded(lambda: SRModel(config), mapped, model=config.name, files=files)


def convert_checkpoint(
    ckpt: str | Path, outdir: str | Path, *, ema: bool | None = None, overwrite: bool = False
) -> Path:
    """Convert an LDSR-S2 v1 ``.ckpt`` into a model folder that :func:`load_model` reads."""
    net = _from_state_dict(ldsr_s2_v1_config(), read_checkpoint(ckpt), ema=ema, source=ckpt)
    card = (
        f"# {net.config.name} {net.config.version}\n\nConverted from `{Path(ckpt).name}` with "
        f"`xr-opensr convert` (UNet weights: {'EMA' if ema else 'raw'}).\n"
        "Model by ESA OpenSR (LDSR-S2); see https://github.com/ESAOpenSR/opensr-model for its licence.\n"
    )
    return save_model(net, outdir, card=card, overwrite=overwrite)
