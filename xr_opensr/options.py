"""The run options of :func:`xr_opensr.superresolve`, defined once: :class:`RunOptions`.

Each field carries its default, its one check and its documentation. ``superresolve``, the
``.opensr`` accessor (their signatures and docstrings, :func:`takes_options`) and the CLI's options
(``xr_opensr.cli.SR_OPTIONS``) are derived from it, so a new option is one field here.
"""

from __future__ import annotations

import inspect
import math
import numbers
import re
import textwrap
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from . import _encode
from ._runtime import ModelRef, ModelSpec
from .errors import InputError
from .looks import window_of
from .models.base import MAX_SAMPLES, SampleOptions

__all__ = ["RunOptions", "takes_options", "model_id", "model20_id"]


def _integer(low: int, expected: str) -> Callable[[str, Any], int]:
    """The check of an integer option >= ``low``: else "<name> must be <expected>, got <value>"."""

    def check(name: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
            raise InputError(f"{name} must be {expected}, got {value!r}")
        return int(value)

    return check


def _count(name: str, value: Any) -> int:
    """A non-negative integer (``samples=0``: the fast deterministic path of a model with a mean network)."""
    if _integer(0, "an integer >= 0 (0: the mean alone, without uncertainty)")(name, value) > MAX_SAMPLES:
        raise InputError(f"{name} must be in [0, {MAX_SAMPLES}] (memory does not grow with samples, time does), "
                         f"got {value}")
    return int(value)


def _optional(check: Callable[[str, Any], Any]) -> Callable[[str, Any], Any]:
    return lambda name, value: None if value is None else check(name, value)


_positive_int = _integer(1, "a positive integer")


def model_id(model: Any) -> str:
    """A registered name as is; a path made absolute (workers may run in another directory)."""
    if not isinstance(model, str | Path):
        raise InputError(f"model must be a registered name or a path, got {type(model).__name__}; "
                         "e.g. model='default', model='tiny' or model='/path/to/model-folder'")
    from .models import registered_models

    if isinstance(model, str) and (model == "default" or model in registered_models()):
        return model
    path = Path(model).expanduser()
    return str(path.resolve()) if path.exists() else str(model)


def model20_id(model20: Any) -> str:
    """The 20 m model as a name or an absolute folder; checked when 20 m bands are asked for."""
    if not isinstance(model20, str | Path):
        raise InputError(f"model20 must be a name ('s2-20m') or a model folder, got {type(model20).__name__}")
    from .models.registry import registered_models

    path = Path(model20).expanduser()
    if isinstance(model20, str) and model20 in registered_models("guided-20m"):
        return model20
    if not path.exists():
        raise InputError(f"no guided model {str(model20)!r}: the 20 m model is a name of "
                         f"{sorted(registered_models('guided-20m'))} or a model folder")
    return str(path.resolve())


def _device(name: str, device: Any) -> str:
    if isinstance(device, str) or type(device).__name__ == "device":  # torch.device, without importing torch
        return str(device)
    raise InputError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")


def _dtype(name: str, dtype: Any) -> str | None:
    if dtype is None or isinstance(dtype, str):
        return dtype
    text = str(dtype)
    if text.startswith("torch."):
        return text[len("torch."):]
    raise InputError(f"dtype must be None, 'float32', 'bfloat16', 'float16' or a torch dtype, got {dtype!r}")


def _eta(name: str, eta: Any) -> float:
    if isinstance(eta, bool) or not isinstance(eta, numbers.Real) or not (math.isfinite(eta) and eta >= 0):
        raise InputError(f"eta must be a real number >= 0 (0 = deterministic DDIM) or None, got {eta!r}")
    return float(eta)


#: how the patches of a run are put together (``superresolve(tiling=...)``)
TILINGS = ("blend", "crop")


def _tiling(name: str, value: Any) -> str:
    if value not in TILINGS:
        raise InputError(f"{name} must be one of {TILINGS}, got {value!r}; 'crop' needs a model that declares its "
                         "receptive-field halo (the default)")
    return value


def _flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool | np.bool_):
        raise InputError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def _option(default: Any, check: Callable[[str, Any], Any] | None, doc: str, **kw: Any) -> Any:
    """A field of :class:`RunOptions`: its default, its check ``(name, value) -> value`` and its doc."""
    return field(default=default, metadata={"check": check, "doc": doc}, **kw)


@dataclass(frozen=True)
class RunOptions:
    """The options of one :func:`xr_opensr.superresolve` call, each checked once when it is made.

    A bad value raises the InputError that names the fix; ``model20`` is checked only when 20 m bands are
    asked for (:func:`model20_id`), ``steps``, ``patch`` and ``overlap`` then also against the model.
    """

    samples: int = _option(10, _count, """samples per patch (>= 0; 0: the model's mean alone, fastest, no
        uncertainty). A diffusion-only model (``"tiny"``, LDSR-S2 v1): ``sr`` is their mean, ``uncertainty`` their std
        times the model's ``std_scale``. The default model (v2): both come from its mean network and calibrated
        spread, and the diffusion model runs only for ``return_samples``; ``samples=0``, the fast deterministic path,
        gives ``uncertainty`` NaN (models without a mean network refuse it when computed).""")
    model: str | Path = _option("default", lambda name, value: model_id(value), """registered name (default, tiny,
        bicubic) or path of a model folder or LDSR-S2 .ckpt.""")
    steps: int | None = _option(None, _optional(_positive_int), "DDIM steps (the model's default if not given).")
    eta: float | None = _option(None, _optional(_eta), "DDIM eta (the model's default if not given).")
    seed: int = _option(0, _integer(0, "a non-negative integer (an integer >= 0, e.g. seed=0)"), """base seed (>= 0).
        A patch's noise depends only on (seed, patch row, patch column, the leading coordinates, e.g. the time stamp):
        results do not depend on chunks or scheduler.""")
    bands: Sequence[Hashable] | Mapping[str, Hashable] | str | None = _option(None, None, """the bands to
        super-resolve. None (default): the 10 m bands B04, B03, B02, B08 (red, green, blue, nir), found by name,
        case-insensitive (``B04``/``B4``/``red`` ...), extra bands ignored. ``"all"``: those four, then those of B05,
        B06, B07, B8A, B11, B12 the input holds. A list of band names (ids or common names) with a 20 m band among
        them or all four 10 m bands, e.g. ``["B04", "B08", "swir16"]``: those bands in that order, each found by the
        name given, then by its aliases. A mapping ``{"B11": "my_label", ...}``: those bands, found by the labels
        given. For inputs whose labels are not band names: a list of the input labels of B04, B03, B02, B08 in that
        order (e.g. ``[1, 2, 3, 4]``), or a mapping ``{"B04": label, "B03": ..., "B02": ..., "B08": ...}``. The 20 m
        bands are expected on the 10 m grid as odc-stac and ``xr_opensr.stac.load_s2`` deliver them by default
        (nearest neighbour: each 20 m pixel a 2 x 2 block of 10 m pixels, blocks on the Sentinel-2 20 m grid, i.e. at
        multiples of 20 m of the CRS): blocks that are not constant (shifted, resampled from another grid, bilinear)
        raise InputError when computed; a block cut by the image edge keeps its half inside. They need the four 10 m
        bands in the input (the guide). The 20 m model sees all six 20 m bands the input holds (asked for or not; a
        band missing from the input, or nodata at a pixel, is stood in for, as the model's input only, by the band
        nearest in wavelength present there).""",
        hash=False)  # a list or mapping, stored as given (checked against the input, in ``_inputs``)
    patch: int | None = _option(None, _optional(_positive_int), """LR pixels per patch side (None: the model's
        ``patch_size``).""")
    overlap: int | None = _option(None, _optional(_integer(0, "an integer >= 0 (LR pixels)")), """LR pixels of overlap
        between neighbouring patches (None: the model's ``default_overlap``; ``0 <= overlap <= patch/2``).""")
    tiling: str = _option("blend", _tiling, """how the patches are put together: ``"blend"`` (the model's patch grid,
        ``patch``/``overlap``, blended in the overlaps with smooth weights) or ``"crop"`` (a model that declares its
        receptive-field halo, the default's mean network and spread head: tiles of 256 LR pixels plus the halo on each
        side, cropped to their centre, so each pixel of ``sr`` and ``uncertainty`` is that of the whole-image run and
        is computed about 1.5x instead of 1.8x; diffusion samples are still blended on the model's grid; 10 m bands
        only: the 20 m path is validated on the model's patch grid).""")
    batch_size: int | None = _option(None, _optional(_positive_int), """(patch, sample) latents per network call, the
        same in every call (None: the model's choice for the device). Results are bit-identical for a given batch size
        whatever the chunking (on the CPU; see the README for GPUs).""")
    threads: int = _option(1, _positive_int, """torch intra-op threads per task on the CPU; results depend on it. 1
        suits dask, which runs a task per core: raise it when a process has more cores than concurrent tasks (a
        one-block cube; a dask worker with ``nthreads=1`` on several cores).""")
    device: str = _option("auto", _device, """``"auto"`` (CUDA if the computing process sees a GPU, else CPU),
        ``"cpu"``, ``"cuda"``, ``"cuda:1"``.""")
    dtype: Any = _option(None, _dtype, """denoiser and decoder dtype: None (float32), "bfloat16" (GPU, or a CPU with
        AMX/AVX512-BF16), "float16" (GPU only), or a torch dtype.""")
    histogram_matching: bool = _option(True, _flag, "match each sample's bands to the LR patch's histograms.")
    return_samples: bool = _option(False, _flag, """also return the samples (variable ``samples``, extra leading dim
        ``sample``), made to agree with ``sr`` and ``uncertainty``. After the patches are blended, each pixel's
        samples are standardised over the sample dim, times ``uncertainty``, plus ``sr``
        (:func:`xr_opensr.models.pipeline.samples_with_moments`); where that would give a negative sample, the lowest
        samples are raised to one common value first (the order is kept). So, for ``samples`` = S >= 2, at every valid
        pixel, patch overlaps included, to float32 rounding: every sample is >= 0 (clipped like ``sr``), their mean is
        ``sr``, and their standard deviation (ddof=1) is ``min(uncertainty, sr * sqrt(S))``: ``uncertainty`` except
        where it exceeds ``sr * sqrt(S)``, the most that S values >= 0 with mean ``sr`` can spread (there the largest
        sample is ``S * sr`` and the others 0; where ``sr`` is 0, all are 0). S = 1: the one sample is ``sr``. The
        diffusion model gives the samples their detail; a diffusion-only model's raw spread is scaled by its
        ``std_scale``, as ``uncertainty`` is. With ``output_dtype="uint16"`` each sample is encoded as the other
        variables (DN = the float32 value x 10000, within 1e-4), so these hold to that rounding. NaN where ``sr`` is
        NaN.""")
    output_dtype: Any = _option(None, lambda name, value: _encode.check_output_dtype(value), """None/"float32"
        (reflectance) or "uint16": DN = round(reflectance x 10000), nodata 0, CF ``scale_factor``/``_FillValue`` attrs
        (lossless to 1e-4; see ``xr_opensr._encode``).""")
    looks: int | None = _option(None, _optional(_positive_int), """multi-date super-resolution: for each date of the
        input's ``time`` dim, up to this many valid looks per pixel (the date itself first, then the other dates within
        ``window``, nearest first), registered to the date (a per-band gain and offset and a sub-pixel shift per
        patch) and fused by a multi-date model (``model="default"`` becomes ``"multidate"``). Adds ``looks`` (looks used
        per pixel) and ``changed`` (looks left out there because they disagreed beyond their noise: change, unmasked
        cloud or shadow), and the coordinate ``look_time`` (time, look). Nodata of a date stays nodata. None: each date
        on its own (single-date).""")
    window: Any = _option("30D", lambda name, value: str(window_of(name, value)), """with ``looks``: the dates within
        this span of a date (either side) are its looks (a pandas time span: ``"30D"``, ``"12h"``).""")
    model20: str | Path = _option("s2-20m", None, """the 20 m-band model: "s2-20m" (shipped) or a model folder; used
        (and checked) only when 20 m bands are asked for. Its uncertainty is its predicted standard deviation
        (``samples`` and ``steps`` concern the 10 m bands); ``return_samples`` is not available with 20 m bands.""")

    def __post_init__(self) -> None:
        for f in fields(self):
            object.__setattr__(self, f.name, self.check(f.name, getattr(self, f.name)))

    @classmethod
    def check(cls, name: str, value: Any) -> Any:
        """``value`` of the option ``name`` checked (and normalised) as :class:`RunOptions` does."""
        check = cls.__dataclass_fields__[name].metadata["check"]
        return value if check is None else check(name, value)

    def spec(self) -> ModelSpec:
        """The model spec the options imply: what to load (:class:`~xr_opensr._runtime.ModelRef`), how to
        sample (:class:`~xr_opensr.models.base.SampleOptions`) and the CPU threads."""
        model = "multidate" if self.looks is not None and self.model == "default" else self.model
        ref = ModelRef(model=model, device=self.device, dtype=self.dtype)
        sampling = SampleOptions(samples=self.samples, steps=self.steps, eta=self.eta, batch_size=self.batch_size,
                                 histogram_matching=self.histogram_matching, return_samples=self.return_samples,
                                 looks=self.looks)
        return ModelSpec(ref, sampling, cpu_threads=self.threads)


def takes_options(*leading: str, options: type[RunOptions] = RunOptions) -> Callable[[Callable], Callable]:
    """Give ``f(*leading, samples=10, **options)`` the signature of ``options`` (the first field positional, the
    rest keyword-only, each with its default and annotation) and, for ``{options}`` in its docstring, their
    numpydoc entries."""
    P, every = inspect.Parameter, fields(options)
    params = [P(name, P.POSITIONAL_OR_KEYWORD) for name in leading] + [
        P(f.name, P.KEYWORD_ONLY if f is not every[0] else P.POSITIONAL_OR_KEYWORD, default=f.default,
          annotation=f.type) for f in every]

    def entry(f: Any, indent: str) -> str:
        kind = f.type if isinstance(f.type, str) else inspect.formatannotation(f.type)
        text = " ".join(f.metadata["doc"].split())
        return f"{f.name} : {kind}, default {f.default!r}\n" + textwrap.fill(text, 100, initial_indent=indent + "    ",
                                                                              subsequent_indent=indent + "    ")

    def decorate(func: Callable) -> Callable:
        func.__signature__ = inspect.Signature(params, return_annotation="xr.Dataset")  # type: ignore[attr-defined]
        found = re.search(r"^( *)\{options\}", func.__doc__ or "", flags=re.M)  # no docstring under python -OO
        if found:
            func.__doc__ = func.__doc__.replace("{options}", f"\n{found[1]}".join(entry(f, found[1]) for f in every))
        return func

    return decorate
