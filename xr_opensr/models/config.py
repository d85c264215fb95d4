"""Model configuration: everything but the weights, stored as ``config.json`` in a model folder.

:func:`load_config` (from :mod:`xr_opensr._config`, re-exported here) is the one loader of every
config dataclass (this model config and its parts, the sections of a training recipe, ...): keys,
types, bounds and choices are checked, and every problem is reported by name, before anything is
built. This module registers the bounds, choices and optional keys of the model classes. Reading a
config never touches weights.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._config import Config, Rules, load_config, plain, register_rules
from ..errors import ConfigError, ModelError
from ..sentinel2 import MODEL_BANDS
from .autoencoder import AutoencoderConfig
from .consistency import ConsistencyConfig
from .diffusion import SamplerConfig, ScheduleConfig
from .regression import MeanNetConfig
from .unet import UNetConfig

__all__ = ["ModelConfig", "FORMAT_VERSION", "JsonConfig", "load_config", "read_config_json"]

#: Version of the config.json layout this library writes and the newest it reads.
FORMAT_VERSION = 1


class JsonConfig(Config):
    """A config (:class:`~xr_opensr._config.Config`) that is written as a JSON file."""

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")


@dataclass(frozen=True)
class ModelConfig(JsonConfig):
    """A super-resolution model: architecture, diffusion, sampling defaults, data conventions.

    Attributes
    ----------
    kind : ``"ldm"`` (a latent diffusion model: :class:`~xr_opensr.models.pipeline.SRModel`) or
        ``"ldm+mean"`` (model v2: :class:`~xr_opensr.models.v2.MeanSpreadModel`); it must agree with
        ``mean_net``, and follows it when left out (None).
    name, version : identify the weights (written into output attributes).
    bands : band names in the order the networks expect (default B04, B03, B02, B08).
    scale : spatial factor LR -> HR (4: 10 m -> 2.5 m).
    patch_size : LR pixels per side of the patches the networks see; every patch has exactly this
        size (GroupNorm statistics depend on it), inputs are padded to it.
    default_overlap : LR pixels of overlap between neighbouring patches in the accessor.
    input_gain, input_offset : per-band normalisation ``x_net = x_reflectance * gain + offset``
        applied before the networks and inverted after (identity for LDSR-S2 v1); the gains are
        positive (the inverse divides by them).
    conditioning : "sample" (draw the encoded LR from the encoder posterior, as LDSR-S2 v1 does) or
        "mode" (use its mean).
    std_scale : factor applied to the per-pixel sample standard deviation (calibration, fitted on
        validation scenes; 1.0 = the raw sample spread); with a ``mean_net``, the factor of its
        spread head's standard deviation.
    mean_net : model v2: a deterministic mean network with a spread head
        (:class:`~xr_opensr.models.regression.MeanNetConfig`) gives the mean and the uncertainty; the
        diffusion model gives the samples' detail (see :mod:`xr_opensr.models.v2`).
        None (LDSR-S2 v1, model v1): mean and spread of the diffusion samples.
    consistency : back-projection of the LR into every sample after sampling (off by default;
        :class:`~xr_opensr.models.consistency.ConsistencyConfig`).
    provenance : free-form metadata (source, training command, licence); ``"trained": false`` marks
        seeded random weights (``tiny``).
    """

    kind: str | None = None
    name: str = "unnamed"
    version: str = "0"
    bands: tuple[str, ...] = MODEL_BANDS
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
    mean_net: MeanNetConfig | None = None
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
        if not all(g > 0 for g in self.input_gain):
            problems.append(f"input_gain must be > 0 (the networks' output is divided by it), got {list(self.input_gain)}")
        if self.conditioning not in ("sample", "mode"):
            problems.append(f"conditioning must be 'sample' or 'mode', got {self.conditioning!r}")
        if not self.std_scale > 0:
            problems.append(f"std_scale must be > 0, got {self.std_scale}")
        structure = "ldm+mean" if self.mean_net is not None else "ldm"
        if self.kind is None:
            object.__setattr__(self, "kind", structure)
        elif self.kind != structure:
            problems.append(f"kind {self.kind!r} does not fit the config: kind 'ldm+mean' (model v2) needs a "
                            f"mean_net, kind 'ldm' has none; this config is a {structure!r}")
        if problems:
            raise ConfigError("invalid model config: " + "; ".join(problems))

    # ----------------------------------------------------------------- (de)serialisation
    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, defaults: bool = False) -> ModelConfig:
        """Check and build a config from a JSON object (see :func:`load_config`).

        ``defaults=False`` (a model's ``config.json``): every key is required except ``name``,
        ``version``, ``std_scale``, ``consistency``, ``provenance`` and ``format_version``.
        ``defaults=True`` (a training recipe): missing keys take the defaults of the classes.
        """
        if isinstance(data, Mapping) and "format_version" in data:
            version = data["format_version"]
            if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
                raise ConfigError(
                    f"config format_version {version} is newer than this xr-opensr reads ({FORMAT_VERSION}); "
                    "upgrade with `pip install -U xr-opensr`"
                )
        return load_config(cls, data, "model config", defaults=defaults)

    @classmethod
    def from_json(cls, path: str | Path) -> ModelConfig:
        path = Path(path)
        data = read_config_json(path, "model config", "re-export the model")
        try:
            return cls.from_dict(data)
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from err

    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with fields replaced, checked like a config file (types, bounds: :func:`load_config`);
        ``kind`` follows the structure unless given."""
        data = {k: v for k, v in self.to_dict().items() if k != "kind"}
        return load_config(ModelConfig, {**data, **plain(changes)}, "model config")


def read_config_json(path: str | Path, what: str, fix: str) -> Any:
    """The JSON value in ``path``, read the one way every model config is read.

    A missing or unreadable file raises ModelError; bytes that are not UTF-8 and text that is not JSON
    raise ConfigError naming the file, ``what`` it is (``"model config"``) and ``fix``.
    """
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError as err:
        raise ModelError(f"{what} not found: {path}") from err
    except UnicodeDecodeError as err:
        raise ConfigError(f"{what} {path} is not UTF-8 text (byte {err.start}: {err.reason}); write it as UTF-8 "
                          f"JSON, or {fix}") from err
    except OSError as err:
        raise ModelError(f"cannot read {what} {path}: {err}") from err
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"{what} {path} is not valid JSON ({err}); {fix}") from err


# --------------------------------------------------------------------------- rules of the model classes
# Sizes a network may have (inclusive bounds of numbers and of every entry of a tuple of numbers), so
# that no config asks for memory or time out of proportion to any model; the keys a model's
# config.json may leave out (they then take the class default; all others are required); the allowed
# strings of a key.

register_rules(ModelConfig, Rules(
    optional=frozenset({"kind", "name", "version", "std_scale", "consistency", "mean_net", "provenance",
                        "format_version"}),
    bounds={"scale": (2, 8), "patch_size": (1, 512), "default_overlap": (0, 256), "std_scale": (1e-6, 1e6),
            "input_gain": (1e-6, 1e6), "input_offset": (-1e6, 1e6), "format_version": (1, 10**6)},
    choices={"conditioning": ("sample", "mode"), "kind": ("ldm", "ldm+mean")},
))
register_rules(AutoencoderConfig, Rules(
    optional=frozenset({"dropout"}),
    bounds={"in_channels": (1, 64), "out_ch": (1, 64), "ch": (1, 2048), "ch_mult": (1, 64),
            "num_res_blocks": (1, 16), "attn_resolutions": (1, 16384), "z_channels": (1, 1024),
            "embed_dim": (1, 1024), "resolution": (1, 16384), "dropout": (0, 1), "num_groups": (1, 1024)},
))
register_rules(UNetConfig, Rules(
    optional=frozenset({"dropout"}),
    bounds={"in_channels": (1, 2048), "out_channels": (1, 1024), "model_channels": (1, 4096),
            "channel_mult": (1, 64), "num_res_blocks": (1, 16), "attention_resolutions": (1, 1024),
            "num_head_channels": (1, 4096), "image_size": (1, 16384), "dropout": (0, 1), "num_groups": (1, 1024)},
))
register_rules(ScheduleConfig, Rules(
    optional=frozenset({"kind", "parameterization"}),
    bounds={"timesteps": (1, 100_000), "linear_start": (1e-12, 0.999), "linear_end": (1e-12, 0.999)},
    choices={"kind": ("linear",), "parameterization": ("eps",)},
))
register_rules(SamplerConfig, Rules(bounds={"steps": (1, 100_000), "eta": (0, 100), "temperature": (1e-6, 100)}))
register_rules(ConsistencyConfig, Rules(bounds={"psf_sigma": (1e-6, 100), "iterations": (0, 100)}))
register_rules(MeanNetConfig, Rules(optional=frozenset({"uncertainty_depth", "uncertainty_detail"}),  # 0.2.0 had neither
                                    bounds={"channels": (1, 1024), "blocks": (1, 64), "res_scale": (0, 10),
                                            "uncertainty_channels": (0, 1024), "uncertainty_depth": (2, 16)}))
