"""xr-opensr: lazy 4x super-resolution of Sentinel-2 with a latent diffusion model.

``import xr_opensr`` registers the ``.opensr`` accessor on xarray objects.
"""

from importlib.metadata import PackageNotFoundError, version

from . import accessor as _accessor  # noqa: F401  (registers .opensr on xarray objects)
from . import errors
from .core import superresolve
from .models import SRModel, convert_checkpoint, load_model, registered_models

try:
    __version__ = version("xr-opensr")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "SRModel",
    "__version__",
    "convert_checkpoint",
    "errors",
    "load_model",
    "registered_models",
    "superresolve",
]
