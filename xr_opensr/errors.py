"""Exception hierarchy of xr-opensr: every error names what was received and the fix."""

from __future__ import annotations

__all__ = [
    "OpenSRError",
    "InputError",
    "BandError",
    "GridError",
    "ModelError",
    "ConfigError",
    "CheckpointError",
    "DeviceError",
    "OutputError",
]


class OpenSRError(Exception):
    """Base class of all xr-opensr errors."""


class InputError(OpenSRError, ValueError):
    """The input data is unusable as given (dtype, shape, values, options)."""


class BandError(InputError):
    """Bands are missing, ambiguous or in an unknown layout."""


class GridError(InputError):
    """The input grid is not a regular 10 m grid in a projected CRS."""


class ModelError(OpenSRError):
    """A model could not be found, built or loaded (unknown name, bad config, bad files)."""


class ConfigError(ModelError, ValueError):
    """A configuration (a model's ``config.json``, a training recipe) is invalid: unknown or missing
    keys, wrong types, values out of bounds, or sizes that do not match the weights."""


class CheckpointError(ModelError):
    """A checkpoint or weights file is missing, corrupt, unsafe or does not fit the config."""


class DeviceError(OpenSRError, RuntimeError):
    """The requested device is not available (e.g. ``device="cuda"`` without a GPU)."""


class OutputError(OpenSRError, OSError):
    """An output cannot be written: missing or read-only folder, no permission, no space, file-size
    limit, another run writing the same path, or a written file that does not read back."""


class OpenSRWarning(UserWarning):
    """A result that is valid but probably not what was meant (e.g. all-zero bands from negative input)."""
