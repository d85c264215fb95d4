"""xr-opensr: lazy 4x super-resolution of Sentinel-2 with a latent diffusion model.

``import xr_opensr`` registers the ``.opensr`` accessor on xarray objects, and rioxarray's ``.rio``
(which reads the CRS and transform of any input: GeoTIFF, Zarr, netCDF). torch is imported only
when a model is first needed (``load_model``, ``SRModel`` or computing a result).
"""

from importlib.metadata import PackageNotFoundError, version
from typing import Any

import rioxarray as _rioxarray  # noqa: F401  (registers .rio on xarray objects)

from . import accessor as _accessor  # noqa: F401  (registers .opensr on xarray objects)
from . import errors
from .core import superresolve

try:
    __version__ = version("xr-opensr")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0"

_FROM_MODELS = ("SRModel", "convert_checkpoint", "load_model", "registered_models")

__all__ = [
    "SRModel",
    "__version__",
    "convert_checkpoint",
    "errors",
    "load_model",
    "registered_models",
    "superresolve",
]


def __getattr__(name: str) -> Any:
    if name in _FROM_MODELS:
        from . import models

        return getattr(models, name)
    raise AttributeError(f"module 'xr_opensr' has no attribute {name!r}")
