"""Model files: load/save model folders, convert LDSR-S2 v1 checkpoints (names: :mod:`.registry`).

A model folder holds ``config.json`` (:class:`ModelConfig`; its ``"kind"`` says which model it is) and
``model.safetensors`` (the state dict of the diffusion model, :class:`SRModel`: ``autoencoder.*`` and
``denoiser.*``); model v2 (kind ``"ldm+mean"``, :class:`~xr_opensr.models.v2.MeanSpreadModel`) has its
mean network in ``mean_net.safetensors`` beside it. Checkpoints (``.ckpt``) are read with
``torch.load(weights_only=True)`` only: no code inside them ever runs.

:func:`load_network` is the one loading path of every model kind (the diffusion models, model v2's
mean network, the 20 m model of :mod:`~xr_opensr.models.guided`): the shapes in the safetensors
headers against the network built on torch's meta device, then the tensors, finite, loaded strictly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import CheckpointError, ConfigError, DeviceError, ModelError
from .autoencoder import AutoencoderConfig
from .config import ModelConfig
from .diffusion import SamplerConfig, ScheduleConfig
from .pipeline import SRModel, resolve_device, resolve_dtype
from .unet import UNetConfig
from .v2 import MeanSpreadModel

__all__ = [
    "load_folder",
    "load_ldsr_checkpoint",
    "load_network",
    "save_model",
    "convert_checkpoint",
    "read_checkpoint",
    "ldsr_s2_v1_config",
    "tiny_config",
    "seeded_model",
    "check_placement",
    "CONFIG_FILE",
    "WEIGHTS_FILE",
    "MEAN_NET_FILE",
]

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "MODEL_CARD.md"
#: model v2's mean network, beside the diffusion networks' file
MEAN_NET_FILE = "mean_net.safetensors"

#: kind -> (the model class, its weights files -> the prefix of their tensors in the model's state dict)
_KINDS: dict[str, tuple[type, dict[str, str]]] = {
    "ldm": (SRModel, {WEIGHTS_FILE: ""}),
    "ldm+mean": (MeanSpreadModel, {WEIGHTS_FILE: "diffusion.", MEAN_NET_FILE: "mean_net."}),
}

# --------------------------------------------------------------------------- configs


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
        provenance={"source": "seeded random weights (not trained): for tests only, output is not meaningful",
                    "trained": False},
    )
    return cfg.replace(**changes) if changes else cfg


def seeded_model(config: ModelConfig, seed: int = 0) -> SRModel | MeanSpreadModel:
    """Untrained model of ``config``'s kind with reproducible random weights (zero-initialised layers
    filled too); its provenance says ``"trained": false``.

    The shipped ``tiny`` model is ``seeded_model(tiny_config(), 0)``.
    """
    torch.manual_seed(seed)
    net = _KINDS[config.kind][0](config.replace(provenance={**config.provenance, "trained": False}))
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in net.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return net.eval()


# --------------------------------------------------------------------------- loading


def check_placement(device: object, dtype: object) -> None:
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


def load_folder(folder: Path, weights: Path | None = None) -> SRModel | MeanSpreadModel:
    """The model in ``folder`` (kind ``"ldm"``: :class:`SRModel`; ``"ldm+mean"``: model v2,
    :class:`~xr_opensr.models.v2.MeanSpreadModel`), on the CPU, unplaced. ``weights``: the diffusion
    networks' file (default ``folder/model.safetensors``)."""
    folder = Path(folder)
    cfg_path = folder / CONFIG_FILE
    weights = Path(weights) if weights is not None else folder / WEIGHTS_FILE
    if not cfg_path.is_file():
        raise CheckpointError(f"{folder} is not a model folder: {CONFIG_FILE} is missing")
    if not weights.is_file():
        raise CheckpointError(f"weights file missing: {weights} (a model folder needs {WEIGHTS_FILE})")
    config = ModelConfig.from_json(cfg_path)
    cls, names = _KINDS[config.kind]
    files = {weights if name == WEIGHTS_FILE else folder / name: prefix for name, prefix in names.items()}
    for path in files:
        if not path.is_file():  # model v2: the mean network in a file of its own
            raise CheckpointError(f"{folder}: config.json has a mean_net but {path.name} is missing; "
                                  "export the model again (`python -m training export --base-model ...`)")
    return load_network(lambda: cls(config), files, model=config.name, config_path=cfg_path)


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
        found.update({prefix + k: v for k, v in _read_weights(path, header_only=True).items()})
    _check_shapes(model, _network_shapes(build, config_path or model), found, files, config_path)
    state: dict[str, torch.Tensor] = {}
    for path, prefix in files.items():
        state.update({prefix + k: v for k, v in _read_weights(path).items()})
    return _build_loaded(build, state, model=model, files=files)


def _read_weights(path: Path, header_only: bool = False) -> dict[str, Any]:
    """Tensor name -> tensor of a safetensors file; ``header_only``: -> shape, from the header alone
    (the tensors stay on disk)."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    try:
        if not header_only:
            return load_file(str(path))
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 (not a dict)
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"cannot read weights {path}: {err}; the file is corrupt or not safetensors") from err


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
            shown = _first_five([f"{k[len(prefix):]} {tuple(found[k])} != config {tuple(expected[k])}"
                                 if label == "wrong shape" else k[len(prefix):] for k in keys])
            parts.append(f"{len(keys)} {label} keys: {shown}")
        if parts:
            texts.append(f"weights {path} do not fit {config}: " + "; ".join(parts))
    raise CheckpointError("; ".join(texts) + ". Use the config.json written with these weights.")


def _first_five(names: list[str]) -> str:
    """``"a, b, c, d, e (+2 more)"``."""
    return ", ".join(names[:5]) + (f" (+{len(names) - 5} more)" if len(names) > 5 else "")


def _build_loaded(build: Callable[[], nn.Module], state: Mapping[str, torch.Tensor], *, model: str,
                  files: Mapping[Path, str]) -> nn.Module:
    """``state`` (keys and shapes already checked) checked finite, then the network built and loaded strictly."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    for path, prefix in files.items():
        here = [k[len(prefix):] for k in bad if _owner(k, files)[0] == path]
        if here:
            raise CheckpointError(
                f"weights {path} hold NaN or infinite values in {len(here)} tensors ({_first_five(here)}): every output of "
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


def save_model(net: SRModel | MeanSpreadModel, folder: str | Path, *, card: str | None = None,
               overwrite: bool = False) -> Path:
    """Write ``config.json`` (with its ``"kind"``) + ``model.safetensors`` (+ ``MODEL_CARD.md``) into
    ``folder``; model v2's mean network goes to ``mean_net.safetensors`` (so a v2 built on a v1's
    networks shares their file)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()) and not overwrite:
        raise ModelError(f"{folder} exists and is not empty; choose a new folder or pass overwrite=True")
    folder.mkdir(parents=True, exist_ok=True)
    net.config.to_json(folder / CONFIG_FILE)
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in net.state_dict().items()}
    for name, prefix in _KINDS[net.config.kind][1].items():
        part = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        save_file(part, str(folder / name), metadata={"format": "pt", "name": net.config.name})
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


def load_ldsr_checkpoint(path: str | Path, ema: bool | None = None) -> SRModel:
    """The LDSR-S2 v1 model of a checkpoint (``.ckpt``, read with ``weights_only=True``), on the CPU,
    unplaced; ``ema``: the EMA UNet weights (True) or the raw ones (False, None: as opensr-model)."""
    state, source = read_checkpoint(path), Path(path)
    config = ldsr_s2_v1_config()
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
    """Convert an LDSR-S2 v1 ``.ckpt`` into a model folder that :func:`xr_opensr.load_model` reads."""
    net = load_ldsr_checkpoint(ckpt, ema=ema)
    card = (
        f"# {net.config.name} {net.config.version}\n\nConverted from `{Path(ckpt).name}` with "
        f"`xr-opensr convert` (UNet weights: {'EMA' if ema else 'raw'}).\n"
        "Model by ESA OpenSR (LDSR-S2); see https://github.com/ESAOpenSR/opensr-model for its licence.\n"
    )
    return save_model(net, outdir, card=card, overwrite=overwrite)
