"""The run options, defined once (``xr_opensr.options.RunOptions``): the signatures and docstrings of
``superresolve`` and the accessor, the CLI's options and every check come from it."""

from __future__ import annotations

import dataclasses
import inspect

import numpy as np
import pytest
import xarray as xr

import xr_opensr  # noqa: F401  (registers .opensr)
from xr_opensr import cli, errors
from xr_opensr.core import superresolve
from xr_opensr.options import RunOptions, takes_options

FIELDS = dataclasses.fields(RunOptions)


def expected_parameters(sig: inspect.Signature, leading: int) -> list[tuple]:
    return [(p.name, p.kind, p.default) for p in list(sig.parameters.values())[leading:]]


@pytest.mark.parametrize(("sig", "leading"), [
    (inspect.signature(superresolve), 1),
    (inspect.signature(xr.DataArray([0]).opensr.superresolve), 0),
    (inspect.signature(xr.Dataset().opensr.superresolve), 0),
])
def test_signatures_are_the_fields_with_their_defaults(sig, leading):
    P = inspect.Parameter
    assert expected_parameters(sig, leading) == [
        (f.name, P.POSITIONAL_OR_KEYWORD if f.name == "samples" else P.KEYWORD_ONLY, f.default) for f in FIELDS
    ]
    assert FIELDS[0].name == "samples" and FIELDS[0].default == 10


def test_docstrings_document_every_option():
    for func in (superresolve, xr_opensr.accessor.OpenSRAccessor.superresolve):
        assert "{options}" not in func.__doc__
        for f in FIELDS:
            assert f"{f.name} : {f.type}, default {f.default!r}" in func.__doc__


def test_every_field_reaches_the_cli_or_says_why_not():
    in_table = [name for name, _ in cli.SR_OPTIONS.values()]
    assert len(in_table) == len(set(in_table))
    assert not set(in_table) & set(cli.NOT_IN_TABLE)
    assert set(in_table) | set(cli.NOT_IN_TABLE) == {f.name for f in FIELDS}
    assert all(reason.strip() for reason in cli.NOT_IN_TABLE.values())
    args = cli.build_parser().parse_args(["superresolve", "in.tif", "out.zarr"])
    defaults = {f.name: f.default for f in FIELDS}
    for flag, (name, own) in cli.SR_OPTIONS.items():  # the field's default unless the CLI gives its own
        assert getattr(args, flag[2:]) == own.get("default", defaults[name])


def test_a_new_field_shows_up_in_the_generated_signature_and_doc():
    extended = dataclasses.make_dataclass(
        "Extended", [("tile_blend", str, dataclasses.field(default="cosine", metadata={
            "check": None, "doc": "how neighbouring patches are blended."}))],
        bases=(RunOptions,), frozen=True)

    @takes_options("obj", options=extended)
    def run(obj, samples=10, **options):
        """Run.

        Parameters
        ----------
        {options}
        """
        return extended(samples, **options)

    sig = inspect.signature(run)
    assert list(sig.parameters)[:2] == ["obj", "samples"]
    assert sig.parameters["tile_blend"].default == "cosine"
    assert sig.parameters["tile_blend"].kind is inspect.Parameter.KEYWORD_ONLY
    assert "tile_blend : str, default 'cosine'\n            how neighbouring patches are blended." in run.__doc__
    assert run(None, 3, seed=np.int64(2), tile_blend="hard").tile_blend == "hard"


def test_checked_once_and_normalised():
    import torch

    opts = RunOptions(np.int64(3), steps=np.int32(4), eta=1, histogram_matching=np.bool_(False), dtype=torch.bfloat16,
                      output_dtype=np.uint16, bands=["B04", "B11"], overlap=np.uint8(2))
    assert (opts.samples, opts.steps, opts.eta, opts.histogram_matching, opts.dtype, opts.output_dtype) == (
        3, 4, 1.0, False, "bfloat16", "uint16")
    assert type(opts.samples) is int and type(opts.histogram_matching) is bool and opts.bands == ["B04", "B11"]
    hash(opts)  # the bands list is stored as given and not hashed
    spec = opts.spec()
    assert (spec.ref.model, spec.ref.device, spec.ref.dtype, spec.cpu_threads) == ("default", "auto", "bfloat16", 1)
    assert (spec.options.samples, spec.options.steps, spec.options.eta, spec.options.histogram_matching) == (
        3, 4, 1.0, False)
    assert dataclasses.replace(opts, seed=5).seed == 5


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"samples": -1}, "samples must be an integer >= 0"),
    ({"samples": 10_001}, r"samples must be in \[0, 10000\]"),
    ({"samples": True}, "samples must be an integer >= 0"),
    ({"steps": 0}, "steps must be a positive integer"),
    ({"eta": float("nan")}, "eta must be a real number >= 0"),
    ({"seed": -3}, "seed must be a non-negative integer"),
    ({"patch": 0}, "patch must be a positive integer"),
    ({"overlap": -1}, "overlap must be an integer >= 0"),
    ({"batch_size": 1.5}, "batch_size must be a positive integer"),
    ({"threads": 0}, "threads must be a positive integer"),
    ({"device": 3}, "device must be 'auto'"),
    ({"dtype": 3}, "dtype must be None"),
    ({"histogram_matching": "yes"}, "histogram_matching must be True or False"),
    ({"return_samples": 1}, "return_samples must be True or False"),
    ({"output_dtype": "float64"}, "output_dtype must be 'float32'"),
    ({"model": 3}, "model must be a registered name or a path"),
])
def test_each_bad_value_is_an_input_error_from_its_one_check(kwargs, match):
    with pytest.raises(errors.InputError, match=match):
        RunOptions(**kwargs)
    ((name, value),) = kwargs.items()
    with pytest.raises(errors.InputError, match=match):
        RunOptions.check(name, value)


def test_unknown_options_are_a_type_error():
    with pytest.raises(TypeError, match="potato"):
        superresolve(xr.DataArray(np.zeros((4, 2, 2))), potato=1)


def test_geometry_reaches_neither_torch_nor_core_nor_the_graph():
    from test_layering import LIB, _closure, touches

    reach = _closure("xr_opensr.geometry")
    assert not [m for m in reach for bad in ("torch", "xr_opensr.core", "xr_opensr._graph") if touches(LIB[m], bad)]
