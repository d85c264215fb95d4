"""The model interface: what a model declares (:class:`ModelInfo`) and what it does (:class:`Model`).

Everything above the models (the dask graph, the kernel, ``core``, the CLI) reads a model only through
this protocol, so a new model is one class implementing it plus one registry entry
(:mod:`xr_opensr.models.registry`), and nothing above needs to know its kind.

A model takes patches of LR reflectance and returns, per patch, per-pixel planes at ``scale`` times
the resolution: plane 0 the mean, plane 1 the standard deviation (NaN where the model gives none),
planes 2.. the samples when asked for and the model has them::

    model.run(patches (N, *W, C_in, P, P) float32, seeds (N,) uint64, options) -> (N, K, C_out, sP, sP)

``W`` are the model's *whole* core dims (``info.core_dims`` before ``("band", "y", "x")``; none for a
single-date model, ``("time",)`` for a multi-date one): the graph hands the model every entry of them
in one patch, and the output has none of them. NaN in the input is nodata; a patch's result may
depend only on its own data and its own seed (never on its batch mates), so results do not depend
on chunking or scheduling.

This module imports neither torch nor numpy at import time (the graph layer may import it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

__all__ = ["ModelInfo", "Sampling", "SampleOptions", "Model", "SPATIAL_CORE_DIMS", "MAX_SAMPLES"]

#: the core dims every model consumes last: one image of bands
SPATIAL_CORE_DIMS = ("band", "y", "x")

#: the most samples per patch: memory does not grow with ``samples`` (they are reduced as they are
#: drawn), but time does, linearly; more than a few hundred samples change the mean and std little
MAX_SAMPLES = 10_000


@dataclass(frozen=True)
class Sampling:
    """A stochastic model's sampler settings: ``steps`` and ``eta`` of ``superresolve`` mean something."""

    steps: int  # default number of denoising steps
    eta: float  # default DDIM eta
    max_steps: int  # the most steps the schedule allows


@dataclass(frozen=True)
class ModelInfo:
    """What a model declares; all that the layers above read of it.

    Attributes
    ----------
    name, version : for attrs, cards and messages.
    bands : the input bands in the model's channel order (for a chain: the 10 m bands, then the 20 m ones).
    bands_out : the output bands in channel order (default: ``bands``).
    scale : HR pixels per LR pixel along an axis.
    patch, overlap : default patch side and overlap (LR pixels) of the graph's patch grid.
    patch_multiple : a patch side must be a multiple of this (e.g. the UNet's downsampling factor).
    halo : LR pixels of context a fully convolutional model needs around an output pixel (its receptive
        field); None: the model is not local (e.g. per-patch histogram matching), patches are blended.
    core_dims : the dims one input item spans, ending with ``("band", "y", "x")``; the ones before are
        whole core dims (e.g. ``("time", "band", "y", "x")``): the graph keeps them whole, the output
        has none of them.
    outputs : which planes mean something: ``"mean"``, ``"std"``, ``"samples"``.
    extra_outputs : names of per-pixel planes the model gives after the mean and std (e.g. a multi-date
        model's ``("looks", "changed")``: counts, the same in every band); ``superresolve`` returns each as
        a variable without the band dim.
    reference_first : the first entry of the first whole core dim is the reference (a multi-date model's
        date asked for), the others extra looks: past the image edge only the reference is mirrored, the
        others are NaN.
    context : a scene-level input the model takes besides its patches, computed by ``superresolve`` from the
        whole input and passed to :meth:`Model.run` as ``context`` (one row per patch): ``"look_shift"``, each
        look's sub-pixel offset from the date asked for, (N, L, 2) LR pixels, NaN where unknown
        (:func:`xr_opensr.looks.look_shifts`); None: none.
    sampling : the sampler's settings for a stochastic model; None: ``steps``/``eta`` mean nothing.
    mean_without_samples : ``samples=0`` gives the mean alone (a deterministic mean path, e.g. a mean
        network); False: the model needs ``samples >= 1``.
    std_scale : the calibration factor applied to the standard deviation (attrs).
    consistency : a description of the model's consistency step (attrs), "none" without one.
    trained : False for seeded random weights (tests only): the CLI warns.
    attrs : further output attrs the model wants recorded (e.g. the 20 m model's name and version).
    """

    name: str
    version: str
    bands: tuple[str, ...]
    scale: int = 4
    patch: int = 32
    overlap: int = 8
    patch_multiple: int = 1
    halo: int | None = None
    core_dims: tuple[str, ...] = SPATIAL_CORE_DIMS
    outputs: tuple[str, ...] = ("mean", "std", "samples")
    extra_outputs: tuple[str, ...] = ()
    reference_first: bool = False
    context: str | None = None
    sampling: Sampling | None = None
    mean_without_samples: bool = False
    std_scale: float = 1.0
    consistency: str = "none"
    trained: bool = True
    bands_out: tuple[str, ...] = ()
    attrs: tuple[tuple[str, Any], ...] = field(default=())

    def __post_init__(self) -> None:
        if tuple(self.core_dims[-3:]) != SPATIAL_CORE_DIMS:
            raise ValueError(f"core_dims must end with {SPATIAL_CORE_DIMS}, got {self.core_dims}")
        if not self.bands_out:
            object.__setattr__(self, "bands_out", tuple(self.bands))

    @property
    def whole_dims(self) -> tuple[str, ...]:
        """The core dims before ``("band", "y", "x")`` that the graph keeps whole (``()`` for one date)."""
        return tuple(self.core_dims[:-3])


@dataclass(frozen=True)
class SampleOptions:
    """How to run a model, per call of :meth:`Model.run` (small, frozen, picklable)."""

    samples: int = 1
    steps: int | None = None  # None: the model's default
    eta: float | None = None  # None: the model's default
    histogram_matching: bool = True
    return_samples: bool = False
    batch_size: int | None = None  # None: the model's choice for its device
    looks: int | None = None  # a multi-date model: most looks per pixel (None: the model's default)

    @property
    def n_outputs(self) -> int:
        """Planes per band a run of a model without extra outputs returns: mean, std (and the samples)."""
        return 2 + (self.samples if self.return_samples else 0)


@runtime_checkable
class Model(Protocol):
    """A super-resolution model as the graph and the kernel see it."""

    @property
    def info(self) -> ModelInfo:  # pragma: no cover - protocol
        """What the model declares."""

    @property
    def device(self) -> Any:  # pragma: no cover - protocol
        """Where it runs (a ``torch.device``)."""

    def place(self, device: Any = "auto", dtype: Any = None) -> Model:  # pragma: no cover - protocol
        """Move to ``device`` and compute in ``dtype``; returns the model."""

    def run(self, patches: Any, seeds: Any, options: SampleOptions) -> Any:  # pragma: no cover - protocol
        """(N, *W, C_in, P, P) float32 LR reflectance, (N,) seeds -> (N, K, C_out, sP, sP) float32 (K: mean,
        std, then ``info.extra_outputs``, then the samples when asked for). A model that declares
        ``info.context`` also takes ``context=`` (N, ...), that input's row for each patch."""
