"""The models of xr-opensr: the model interface (:mod:`.base`), the registry (:mod:`.registry`), the
networks, diffusion and model files. torch is imported only when a name that needs it is first used
(``from xr_opensr.models.base import ModelInfo`` imports no torch)."""

from importlib import import_module
from typing import Any

#: public name -> the submodule that defines it (imported on first use)
_NAMES = {
    "AutoencoderConfig": "autoencoder", "AutoencoderKL": "autoencoder",
    "FORMAT_VERSION": "config", "ModelConfig": "config",
    "DDIMSampler": "diffusion", "NoiseSchedule": "diffusion", "SamplerConfig": "diffusion", "ScheduleConfig": "diffusion",
    "convert_checkpoint": "io", "ldsr_s2_v1_config": "io", "save_model": "io", "tiny_config": "io",
    "load_model": "registry", "registered_models": "registry",
    "MeanSpreadModel": "v2",
    "SRModel": "pipeline", "match_histograms": "pipeline",
    "UNet": "unet", "UNetConfig": "unet",
    "Model": "base", "ModelInfo": "base", "SampleOptions": "base",
}

__all__ = sorted(_NAMES)


def __getattr__(name: str) -> Any:
    if name in _NAMES:
        return getattr(import_module(f".{_NAMES[name]}", __name__), name)
    raise AttributeError(f"module 'xr_opensr.models' has no attribute {name!r}")
