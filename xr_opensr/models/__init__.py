"""Torch networks, diffusion, and model files of xr-opensr."""

from .autoencoder import AutoencoderConfig, AutoencoderKL
from .config import FORMAT_VERSION, ModelConfig
from .diffusion import DDIMSampler, NoiseSchedule, SamplerConfig, ScheduleConfig
from .io import (
    convert_checkpoint,
    ldsr_s2_v1_config,
    load_model,
    registered_models,
    save_model,
    tiny_config,
)
from .pipeline import SRModel, match_histograms
from .unet import UNet, UNetConfig

__all__ = [
    "AutoencoderConfig",
    "AutoencoderKL",
    "DDIMSampler",
    "FORMAT_VERSION",
    "ModelConfig",
    "NoiseSchedule",
    "SRModel",
    "SamplerConfig",
    "ScheduleConfig",
    "UNet",
    "UNetConfig",
    "convert_checkpoint",
    "ldsr_s2_v1_config",
    "load_model",
    "match_histograms",
    "registered_models",
    "save_model",
    "tiny_config",
]
