"""Model configs are checked before anything is built: one loader, typed errors, shapes from the
safetensors header compared with the config, hostile files, resuming from a damaged checkpoint."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from xr_opensr import registered_models
from xr_opensr.errors import CheckpointError, ConfigError, DeviceError, InputError
from xr_opensr.models import ModelConfig, load_model, save_model, tiny_config
from xr_opensr.models.config import load_config
from xr_opensr.models.diffusion import SamplerConfig

ROOT = Path(__file__).parents[1]


@pytest.fixture
def tiny_folder(tmp_path) -> Path:
    folder = tmp_path / "tiny"
    shutil.copytree(registered_models()["tiny"], folder)
    return folder


def _edit(folder: Path, change) -> Path:
    data = json.loads((folder / "config.json").read_text())
    change(data)
    (folder / "config.json").write_text(json.dumps(data))
    return folder


# --------------------------------------------------------------------------- the loader


@pytest.mark.parametrize("name", ["tiny", "default"])
def test_shipped_configs_load_strictly_and_round_trip(name, tmp_path):
    if name not in registered_models():
        pytest.skip(f"no {name!r} model in this checkout")
    path = registered_models()[name] / "config.json"
    cfg = ModelConfig.from_json(path)
    cfg.to_json(tmp_path / "c.json")
    assert ModelConfig.from_json(tmp_path / "c.json") == cfg
    assert json.loads((tmp_path / "c.json").read_text())["denoiser"] == json.loads(path.read_text())["denoiser"]


def _drop(section, key):
    return lambda d: d[section].pop(key) if section else d.pop(key)


def _set(section, key, value):
    def change(d):
        (d[section] if section else d)[key] = value
    return change


HOSTILE = [
    (_set(None, "patch_size", "16"), r"'patch_size' must be int, got str '16'"),
    (_set("denoiser", "model_channels", 8192), r"'denoiser.model_channels' must be in \[1, 4096\], got 8192"),
    (_set(None, "patch_size", 100_000), r"'patch_size' must be in \[1, 512\]"),
    (_set("denoiser", "num_res_blocks", True), r"'denoiser.num_res_blocks' must be int, got bool"),
    (_set("denoiser", "num_head_channels", 0), r"'denoiser.num_head_channels' must be in \[1, 4096\], got 0"),
    (_set("autoencoder", "ch_mult", [1, 2, "4"]), r"'autoencoder.ch_mult' must be int, got str '4'"),
    (_set("sampler", "eta", float("nan")), r"'sampler.eta' must be a finite number"),
    (_set(None, "bands", "B04"), r"'bands' must be a list, got str"),
    (_set(None, "conditioning", "maybe"), r"'conditioning' must be one of \['sample', 'mode'\]"),
    (_set("schedule", "kind", "cosine"), r"'schedule.kind' must be one of \['linear'\]"),
    (_set(None, "denoiser", [16]), r"model config 'denoiser' must be a JSON object, got list"),
    (_set("denoiser", "colour", "red"), r"unknown keys in model config 'denoiser': \['colour'\]"),
    (_drop(None, "sampler"), r"missing keys in model config: \['sampler'\] \(no default is assumed"),
    (_drop("denoiser", "model_channels"), r"missing keys in model config 'denoiser': \['model_channels'\]"),
    (_drop(None, "patch_size"), r"missing keys in model config: \['patch_size'\]"),
    (_set("denoiser", "num_head_channels", 7), r"describes no network that can be built.*num_head_channels=7"),
    (_set("consistency", "kernel", "sinc"), r"consistency.kernel must be one of"),
    # issue 19: values inside the per-key bounds that gave a model that loads and runs
    (_set("schedule", "linear_start", 0.02), r"invalid schedule: 'linear_start' \(0.02\) must be <= 'linear_end' \(0.01"),
    (_set("schedule", "linear_end", 1), r"'schedule.linear_end' must be in \[1e-12, 0.999\], got 1"),
    (_set(None, "input_gain", [4.0, 0, 4.0, 4.0]), r"'input_gain' must be in \[1e-06, 1e\+06\], got 0"),
    (_set(None, "input_gain", [4.0, -4.0, 4.0, 4.0]), r"'input_gain' must be in \[1e-06, 1e\+06\], got -4"),
]


@pytest.mark.parametrize(("change", "match"), HOSTILE)
def test_hostile_configs_are_config_errors_naming_the_key(tiny_folder, change, match):
    _edit(tiny_folder, lambda d: d.setdefault("consistency", {"kernel": "none", "psf_sigma": 1.7, "iterations": 1}))
    _edit(tiny_folder, change)
    with pytest.raises(ConfigError, match=match):
        load_model(tiny_folder, device="cpu")


def test_all_problems_are_reported_at_once():
    data = tiny_config().to_dict()
    data["patch_size"] = "16"
    data["denoiser"]["dropout"] = "none"
    del data["sampler"]
    with pytest.raises(ConfigError) as info:
        ModelConfig.from_dict(data)
    text = str(info.value)
    assert "'patch_size' must be int" in text and "'denoiser.dropout' must be float" in text and "['sampler']" in text


def test_optional_keys_take_documented_defaults():
    data = tiny_config().to_dict()
    for key in ("name", "version", "std_scale", "consistency", "provenance", "format_version"):
        data.pop(key)
    cfg = ModelConfig.from_dict(data)
    assert (cfg.name, cfg.std_scale, cfg.consistency.kernel) == ("unnamed", 1.0, "none")
    # recipes (training configs) may leave out anything: defaults=True
    assert load_config(SamplerConfig, {"steps": 7}, "sampler", defaults=True) == SamplerConfig(steps=7)
    with pytest.raises(ConfigError, match=r"missing keys in sampler: \['eta', 'temperature'\]"):
        load_config(SamplerConfig, {"steps": 7}, "sampler")


def test_replace_is_checked_like_a_file():
    assert tiny_config().replace(std_scale=2).std_scale == 2.0
    with pytest.raises(ConfigError, match=r"'patch_size' must be int, got str 'x'"):
        tiny_config().replace(patch_size="x")  # e.g. python -m training ... --set model.patch_size=x
    with pytest.raises(ConfigError, match=r"unknown keys in model config: \['colour'\]"):
        tiny_config().replace(colour="red")


def test_training_recipes_use_the_same_loader():
    from training.config import TrainConfig

    with pytest.raises(ConfigError, match=r"'autoencoder.steps' must be int, got str"):
        TrainConfig.from_dict({"autoencoder": {"steps": "many"}})
    with pytest.raises(ConfigError, match=r"'model.denoiser.model_channels' must be in"):
        TrainConfig.from_dict({"model": {"denoiser": {"model_channels": 10**6}}})
    with pytest.raises(ValueError, match="unknown keys"):  # ConfigError is a ValueError
        TrainConfig.from_dict({"diffusion": {"stepz": 3}})


def test_data_degradation_and_scene_configs_use_the_same_loader():
    import xr_opensr._config
    from training.data import DataConfig
    from training.degradation import DegradationConfig
    from xr_opensr.testing import SceneStyle

    assert load_config is xr_opensr._config.load_config  # re-exported, one function
    with pytest.raises(ConfigError, match=r"degradation config 'factor' must be int, got str '4'"):
        DegradationConfig.from_dict({"factor": "4"})
    with pytest.raises(ConfigError, match=r"unknown degradation keys \['sigma'\]; expected a subset of"):
        DegradationConfig.from_dict({"sigma": 1})
    assert DegradationConfig.from_dict({"psf_sigma_range": [1, 2]}).psf_sigma_range == (1.0, 2.0)
    with pytest.raises(ConfigError, match=r"data config 'augment' must be bool, got int"):
        DataConfig.from_dict({"augment": 1})
    with pytest.raises(ConfigError, match=r"data config 'user_paths' must be a list, got str"):
        DataConfig.from_dict({"user_paths": "a.tif"})
    many = [f"tile{i}.tif" for i in range(40)]  # no cap on the number of user paths (model tuples: 16)
    assert DataConfig.from_dict({"user_paths": many, "user_weight": 1.0}).user_paths == tuple(many)
    # path objects from Python callers become strings, as before the one loader
    assert DataConfig.from_dict({"user_paths": [Path("a.tif")]}).user_paths == ("a.tif",)
    with pytest.raises(ConfigError, match=r"SceneStyle 'land_cover' must be float, got str"):
        SceneStyle.from_dict({"land_cover": {"water": "much"}})
    assert SceneStyle.from_dict({"land_cover": {"water": 1}}).land_cover == {"water": 1.0}
    with pytest.raises(ConfigError, match=r"^invalid SceneStyle: cloud_cover must be"):  # said once
        SceneStyle.from_dict({"cloud_cover": [0.5, 0.2]})


def test_malformed_files_are_typed(tiny_folder):
    (tiny_folder / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_model(tiny_folder, device="cpu")
    (tiny_folder / "config.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="model config must be a JSON object, got list"):
        load_model(tiny_folder, device="cpu")


def test_reading_a_config_never_reads_the_weights(tiny_folder):
    (tiny_folder / "model.safetensors").write_bytes(b"\x00" * 10)  # corrupt weights
    assert ModelConfig.from_json(tiny_folder / "config.json").name == "tiny"
    with pytest.raises(CheckpointError, match="corrupt or not safetensors"):
        load_model(tiny_folder, device="cpu")


# --------------------------------------------------------------------------- config vs weights


def test_config_bigger_than_its_weights_fails_fast_without_allocating(tiny_folder):
    """4096 channels with the 1.4 MB tiny weights: the header's shapes say no before any network is
    built (building it would take gigabytes). Peak RSS measured in a fresh process."""
    _edit(tiny_folder, _set("denoiser", "model_channels", 4096))
    code = textwrap.dedent(f"""
        import resource, time
        import xr_opensr
        from xr_opensr.errors import CheckpointError
        from xr_opensr.models import load_model
        load_model("tiny", device="cpu")  # warm: imports, one small model
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t = time.perf_counter()
        try:
            load_model({str(tiny_folder)!r}, device="cpu")
        except CheckpointError as err:
            print("MESSAGE", str(err)[:400])
        print("SECONDS", time.perf_counter() - t)
        print("GROWTH_MB", (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    values = dict(line.split(" ", 1) for line in out.stdout.splitlines() if " " in line)
    assert "do not fit the config of model 'tiny'" in values["MESSAGE"]
    assert "denoiser.input_blocks.0.0.bias (16,) != config (4096,)" in values["MESSAGE"]
    assert float(values["SECONDS"]) < 5
    assert float(values["GROWTH_MB"]) < 100  # the network would need > 2 GB


def test_weights_with_nan_are_refused(tmp_path):
    model = load_model("tiny", device="cpu")
    with torch.no_grad():
        model.denoiser.out[-1].bias[0] = float("nan")
    folder = save_model(model, tmp_path / "nan")
    with pytest.raises(CheckpointError, match=r"NaN or infinite values in 1 tensors \(denoiser.out.2.bias\)"):
        load_model(folder, device="cpu")


def test_checkpoint_shapes_are_checked_before_building(tmp_path):
    """The .ckpt path: keys and shapes of the LDSR-S2 v1 layout, compared before the network is built."""
    state = {"first_stage_model.encoder.conv_in.weight": torch.zeros(3, 4, 3, 3)}
    torch.save({"state_dict": state}, tmp_path / "small.ckpt")
    with pytest.raises(CheckpointError, match=r"missing keys.*wrong shape keys: autoencoder.encoder.conv_in.weight "
                                              r"\(3, 4, 3, 3\) != config \(128, 4, 3, 3\)"):
        load_model(tmp_path / "small.ckpt", device="cpu")


def test_unknown_device_and_dtype_are_typed_before_loading():
    with pytest.raises(DeviceError, match=r"device='potato' is not a device: use 'auto'.*'cuda:N'"):
        load_model("tiny", device="potato")
    with pytest.raises(InputError, match="dtype='float8' is not supported"):
        load_model("tiny", device="cpu", dtype="float8")


# --------------------------------------------------------------------------- training: --resume


def test_resume_from_a_truncated_checkpoint_is_a_clear_error(tmp_path):
    stage = tmp_path / "run" / "autoencoder"
    stage.mkdir(parents=True)
    ckpt = stage / "checkpoint.pt"
    torch.save({"step": 3, "wall_s": 1.0, "stage": {"w": torch.zeros(4096)}, "rng": {}}, ckpt)
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    cmd = [sys.executable, "-m", "training", "autoencoder", "--config", str(ROOT / "training/configs/tiny.json"),
           "--out", str(tmp_path / "run"), "--resume", "--no-progress"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "cannot resume from" in out.stderr and "truncated or corrupt" in out.stderr
    assert "Traceback" not in out.stderr
    from training import loop

    torch.save({"step": 3}, ckpt)
    with pytest.raises(CheckpointError, match=r"not a training checkpoint \(missing \['wall_s', 'stage', 'rng'\]\)"):
        loop.load_checkpoint(ckpt)
