"""Model configuration: everything but the weights, stored as ``config.json`` in a model folder."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ModelError
from .autoencoder import AutoencoderConfig
from .consistency import ConsistencyConfig
from .diffusion import SamplerConfig, ScheduleConfig
from .unet import UNetConfig

__all__ = ["ModelConfig", "FORMAT_VERSION"]

#: Version of the config.json layout this library writes and the newest it reads.
FORMAT_VERSION = 1


@dataclass(frozen=True)
class ModelConfig:
    """A super-resolution model: architecture, diffusion, sampling defaults, data conventions.

    Attributes
    ----------
    name, version : identify the weights (written into output attributes).
    bands : band names in the order the networks expect (default B04, B03, B02, B08).
    scale : spatial factor LR -> HR (4: 10 m -> 2.5 m).
    patch_size : LR pixels per side of the patches the networks see; every patch has exactly this
        size (GroupNorm statistics depend on it), inputs are padded to it.
    default_overlap : LR pixels of overlap between neighbouring patches in the accessor.
    input_gain, input_offset : per-band normalisation ``x_net = x_reflectance * gain + offset``
        applied before the networks and inverted after (identity for LDSR-S2 v1).
    conditioning : "sample" (draw the encoded LR from the encoder posterior, as LDSR-S2 v1 does) or
        "mode" (use its mean).
    std_scale : factor applied to the per-pixel sample standard deviation (calibration, fitted on
        validation scenes; 1.0 = the raw sample spread).
    consistency : back-projection of the LR into every sample after sampling (off by default;
        :class:`~xr_opensr.models.consistency.ConsistencyConfig`).
    provenance : free-form metadata (source, training command, licence).
    """

    name: str = "unnamed"
    version: str = "0"
    bands: tuple[str, ...] = ("B04", "B03", "B02", "B08")
    scale: int = 4
    patch_size: int = 128
    default_overlap: int = 16
    input_gain: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0)
    input_offset: tuple[float, ...] = (0.0, 0.0, 0.0, 0.0)
    conditioning: str = "sample"
    std_scale: float = 1.0
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    denoiser: UNetConfig = field(default_factory=UNetConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    consistency: ConsistencyConfig = field(default_factory=ConsistencyConfig)
    provenance: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        n = len(self.bands)
        problems = []
        if self.autoencoder.in_channels != n or self.autoencoder.out_ch != n:
            problems.append(f"autoencoder in/out channels must equal the {n} bands")
        if self.denoiser.in_channels != 2 * self.autoencoder.embed_dim:
            problems.append("denoiser.in_channels must be 2 * autoencoder.embed_dim (noisy latent ++ condition)")
        if self.denoiser.out_channels != self.autoencoder.embed_dim:
            problems.append("denoiser.out_channels must equal autoencoder.embed_dim")
        if self.autoencoder.downsampling != self.scale:
            problems.append(
                f"the autoencoder downsamples by {self.autoencoder.downsampling}, so the latent of the "
                f"{self.scale}x upsampled LR would not have LR size; use len(ch_mult) = log2(scale) + 1"
            )
        unet_factor = 2 ** (len(self.denoiser.channel_mult) - 1)
        if self.patch_size % unet_factor:
            problems.append(f"patch_size {self.patch_size} must be divisible by the UNet's factor {unet_factor}")
        if not 0 <= self.default_overlap < self.patch_size // 2:
            problems.append(f"default_overlap {self.default_overlap} must be in [0, patch_size/2)")
        if len(self.input_gain) != n or len(self.input_offset) != n:
            problems.append("input_gain and input_offset need one value per band")
        if self.conditioning not in ("sample", "mode"):
            problems.append(f"conditioning must be 'sample' or 'mode', got {self.conditioning!r}")
        if not self.std_scale > 0:
            problems.append(f"std_scale must be > 0, got {self.std_scale}")
        if problems:
            raise ModelError("invalid model config: " + "; ".join(problems))

    # ----------------------------------------------------------------- (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        data = dict(data)
        version = int(data.get("format_version", FORMAT_VERSION))
        if version > FORMAT_VERSION:
            raise ModelError(
                f"config format_version {version} is newer than this xr-opensr reads ({FORMAT_VERSION}); "
                "upgrade with `pip install -U xr-opensr`"
            )
        nested = {
            "autoencoder": AutoencoderConfig,
            "denoiser": UNetConfig,
            "schedule": ScheduleConfig,
            "sampler": SamplerConfig,
            "consistency": ConsistencyConfig,
        }
        kwargs: dict[str, Any] = {}
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ModelError(f"unknown keys in model config: {unknown}; expected a subset of {sorted(known)}")
        for key, value in data.items():
            if key in nested:
                kwargs[key] = _build(nested[key], value, key)
            elif key in ("bands", "input_gain", "input_offset"):
                kwargs[key] = tuple(value)
            else:
                kwargs[key] = value
        return cls(**kwargs)

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_json(cls, path: str | Path) -> ModelConfig:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError as err:
            raise ModelError(f"model config not found: {path}") from err
        except json.JSONDecodeError as err:
            raise ModelError(f"model config {path} is not valid JSON ({err}); re-export the model") from err
        if not isinstance(data, dict):
            raise ModelError(f"model config {path} must hold a JSON object")
        return cls.from_dict(data)

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)


def _build(kind: type, value: dict[str, Any], where: str) -> Any:
    if not isinstance(value, dict):
        raise ModelError(f"model config '{where}' must be an object, got {type(value).__name__}")
    names = {f.name for f in dataclasses.fields(kind)}
    unknown = sorted(set(value) - names)
    if unknown:
        raise ModelError(f"unknown keys in model config '{where}': {unknown}; expected a subset of {sorted(names)}")
    return kind(**{k: tuple(v) if isinstance(v, list) else v for k, v in value.items()})
