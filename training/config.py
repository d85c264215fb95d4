"""Training configuration: one JSON file holds the model, the data, each stage and the evaluation.

``TrainConfig.from_json(path)`` reads a file such as ``training/configs/default.json`` with
xr-opensr's one config loader (:func:`xr_opensr.models.config.load_config`): missing keys take the
defaults below; unknown keys, wrong types and out-of-range sizes raise ``ConfigError``. The model section is an
:class:`xr_opensr.models.ModelConfig` (the same object that ends up as the exported ``config.json``);
``data`` and ``degradation`` are passed as keyword arguments to :class:`training.data.DataConfig` and
:class:`training.degradation.DegradationConfig`; ``evaluate.unseen_scene`` and
``evaluate.unseen_degradation`` (the unseen-domain set) to :class:`xr_opensr.testing.SceneStyle` and
:class:`training.degradation.DegradationConfig`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xr_opensr.models import ModelConfig
from xr_opensr.models.config import JsonConfig

__all__ = [
    "AutoencoderStageConfig",
    "DiffusionStageConfig",
    "EvalConfig",
    "RegressionStageConfig",
    "RunConfig",
    "TrainConfig",
]


@dataclass(frozen=True)
class AutoencoderStageConfig:
    """Stage 1: the KL autoencoder, on HR patches of ``4 * model.patch_size`` pixels.

    Loss = l1_weight * L1 + perceptual_weight * LPIPS + kl_weight * KL + histogram_weight * hist
    + adaptive_weight * disc_weight * hinge_G (from step ``disc_start`` on). L1 and the histogram
    term are computed on normalised values (``model.input_gain/offset``), LPIPS on reflectance.
    """

    steps: int = 600
    batch_size: int = 4
    lr: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.9)
    warmup_steps: int = 20
    min_lr_ratio: float = 0.1  # cosine decay from lr to lr * min_lr_ratio over the run
    grad_clip: float = 1.0
    sample_posterior: bool = True
    l1_weight: float = 1.0
    perceptual_net: str = "stlpips-alex"
    perceptual_weight: float = 0.1
    perceptual_nir: bool = False  # also compare NIR as a grey RGB triplet (twice the LPIPS cost)
    perceptual_reflectance_max: float = 0.4  # reflectance mapped to +1 for the LPIPS network
    kl_weight: float = 1e-6
    histogram_weight: float = 0.1
    histogram_bins: int = 64
    histogram_bandwidth: float = 1.0
    histogram_divergence: str = "wasserstein"
    disc_weight: float = 0.1
    disc_start: int = 400
    disc_lr: float = 2e-4
    disc_channels: int = 32
    disc_layers: int = 3
    adaptive_weight_max: float = 1e4
    latent_stat_batches: int = 8  # batches used to standardise the latent after training


@dataclass(frozen=True)
class DiffusionStageConfig:
    """Stage 2: the denoising UNet on latents of the frozen (standardised) autoencoder."""

    steps: int = 1200
    batch_size: int = 16
    lr: float = 3e-4
    weight_decay: float = 0.0
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    target: str = "mode"  # latent of the HR: "mode" (posterior mean) or "sample"
    ema_decay: float = 0.995
    mixed_precision: bool = True  # autocast bf16, on a GPU only
    cache_pairs: int = 768  # encode this many training pairs once (0: encode every batch afresh)
    preview_samples: int = 4
    preview_steps: int = 20
    preview_eta: float = 0.95


@dataclass(frozen=True)
class RegressionStageConfig:
    """The deterministic baseline (``python -m training regression``): an EDSR-like CNN at LR
    resolution (``blocks`` residual blocks of ``channels``, PixelShuffle, residual on bicubic)
    trained with an L1 loss on the same training pairs (:mod:`training.regression`)."""

    steps: int = 6000
    batch_size: int = 16
    lr: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 100
    min_lr_ratio: float = 0.05
    grad_clip: float = 1.0
    channels: int = 32
    blocks: int = 10
    res_scale: float = 1.0
    uncertainty_channels: int = 32
    uncertainty_depth: int = 2
    uncertainty_detail: bool = False
    #: ``python -m training spread``: the spread head alone refitted on the trained (frozen) mean
    spread_steps: int = 3000
    spread_lr: float = 1e-3


#: The unseen-domain set's scenes (``evaluate.unseen_scene``): another land-cover mix (more urban,
#: forest, bare soil and water), smaller parcels, coarser and stronger textures, thinner clouds.
UNSEEN_SCENE = {
    "land_cover": {"cropland": 0.12, "grassland": 0.13, "forest": 0.25, "bare_soil": 0.15, "urban": 0.25,
                   "water": 0.10},
    "parcel_size_m": 70.0,
    "texture_scale": 1.6,
    "texture_strength": 1.4,
    "cloud_cover": [0.05, 0.25],
}
#: Scenes with more fine, sub-pixel texture than the training generator's: the default's uncertainty is
#: calibrated over these (validation seeds) beside the usual validation domains, and the ``fine_texture``
#: evaluation set (test seeds) is another, finer one (issue 21: the spread head alone covered ~70-85 %
#: of the errors on such scenes).
FINE_SCENES = ({"texture_scale": 0.4, "texture_strength": 2.5},
               {"texture_scale": 0.6, "texture_strength": 1.8, "parcel_size_m": 60.0})
FINE_TEST_SCENE = {"texture_scale": 0.3, "texture_strength": 3.0, "parcel_size_m": 50.0}
#: held-out sets a config may add to the evaluation (``evaluate.extra_sets``) -> their summary prefix:
#: synthetic scenes of FINE_TEST_SCENE, the evaluation half of the real BigEarthNet patches
EXTRA_SETS = {"fine_texture": "fine", "real_bigearthnet": "bigearthnet"}
#: The unseen-domain set's sensor (``evaluate.unseen_degradation``): the PSF sigma (HR px) drawn in
#: 1.4-2.0 per scene, LR noise of 0.0005-0.002 reflectance, misregistration of up to 1.2 HR px
#: (0.3 LR px, Sentinel-2's multispectral registration requirement) per axis.
UNSEEN_DEGRADATION = {"psf_sigma_range": [1.4, 2.0], "noise_std_range": [0.0005, 0.002], "shift_max": 1.2}


@dataclass(frozen=True)
class RunConfig:
    """What every stage shares: seed, device, threads, how often to log, save and draw."""

    seed: int = 0
    device: str = "auto"
    threads: int = 0  # torch intra-op threads; 0 = torch's default
    data_workers: int = 0  # processes that make training pairs (0: in the training process)
    log_every: int = 10
    checkpoint_every: int = 100
    sample_every: int = 200  # sample grid + losses.png every N steps and at the end; 0: none
    preview_items: int = 4


@dataclass(frozen=True)
class EvalConfig:
    """Calibration (validation scenes) and held-out evaluation.

    Synthetic validation, test and unseen-domain scenes use the plain seeds ``<set>_seed + i``
    (disjoint ranges, checked); training scenes use ``(data.seed, tag, i)`` sequences, never a plain
    seed. The held-out real crops come from ``training.data`` with ``split="heldout"`` (south of
    the line). The unseen-domain set (``unseen_*``) is made with another scene generator setting
    and another sensor; neither training nor calibration sees it.

    ``samples`` samples make the SR mean of the headline figures; the uncertainty is scored with the
    first ``k`` samples for each ``k`` of ``sample_counts`` (each >= 2); ``max(samples,
    *sample_counts)`` samples are drawn per patch.
    """

    validation_seed: int = 1_000_000
    test_seed: int = 2_000_000
    unseen_seed: int = 3_000_000
    validation_items: int = 16
    test_items: int = 32
    unseen_items: int = 32
    real_items: int = 16
    unseen_clouds: float = 0.25  # probability that an unseen-domain scene has clouds
    unseen_scene: dict[str, Any] = field(default_factory=lambda: dict(UNSEEN_SCENE))
    unseen_degradation: dict[str, Any] = field(default_factory=lambda: dict(UNSEEN_DEGRADATION))
    samples: int = 10
    sample_counts: tuple[int, ...] = (4, 10)
    opensr_border: int = 16  # HR px cut from each side for the opensr-test metrics (opensr-test's default)
    steps: int = 20
    eta: float = 0.95
    histogram_matching: bool = True
    coverage_target: float = 0.925  # fraction of |mean - HR| errors inside +-2 std after calibration
    batch_size: int = 8
    lpips_net: str = "auto"  # xr_opensr.metrics.lpips: lpips-alex if its trunk is cached, else stlpips-alex
    #: more held-out sets scored (training.card.EXTRA_SETS): "fine_texture" (synthetic scenes of FINE_TEST_SCENE,
    #: test seeds), "real_bigearthnet" (the evaluation half of the BigEarthNet patches)
    extra_sets: tuple[str, ...] = ()


@dataclass(frozen=True)
class TrainConfig(JsonConfig):
    """A whole training recipe. ``name`` is the default run folder (``runs/<name>``)."""

    WHERE = "training config"

    name: str = "unnamed"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: dict[str, Any] = field(default_factory=dict)
    degradation: dict[str, Any] = field(default_factory=dict)
    autoencoder: AutoencoderStageConfig = field(default_factory=AutoencoderStageConfig)
    diffusion: DiffusionStageConfig = field(default_factory=DiffusionStageConfig)
    regression: RegressionStageConfig = field(default_factory=RegressionStageConfig)
    run: RunConfig = field(default_factory=RunConfig)
    evaluate: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        problems = []
        if self.autoencoder.histogram_divergence not in ("wasserstein", "symmetric_kl"):
            problems.append("autoencoder.histogram_divergence must be 'wasserstein' or 'symmetric_kl'")
        if self.diffusion.target not in ("mode", "sample"):
            problems.append("diffusion.target must be 'mode' or 'sample'")
        if self.autoencoder.perceptual_net == "none" and self.autoencoder.perceptual_weight:
            problems.append("autoencoder.perceptual_net is 'none' but perceptual_weight is not 0")
        for name in ("autoencoder", "diffusion", "regression"):
            if getattr(self, name).steps < 1 or getattr(self, name).batch_size < 1:
                problems.append(f"{name}.steps and {name}.batch_size must be >= 1")
        if not 0 < self.evaluate.coverage_target < 1:
            problems.append("evaluate.coverage_target must be in (0, 1)")
        problems += self._evaluation_problems()
        consistency, psf = self.model.consistency, self.degradation_config().psf_sigma
        if consistency.kernel == "psf" and abs(consistency.psf_sigma - psf) > 1e-9:
            problems.append(f"model.consistency.psf_sigma ({consistency.psf_sigma}) must equal the training "
                            f"degradation's psf_sigma ({psf}): the step inverts the sensor model the model learnt")
        if problems:
            raise ValueError("invalid training config: " + "; ".join(problems))

    def _evaluation_problems(self) -> list[str]:
        ev, problems = self.evaluate, []
        ranges = {"validation": (ev.validation_seed, ev.validation_items), "test": (ev.test_seed, ev.test_items),
                  "unseen": (ev.unseen_seed, ev.unseen_items)}
        names = list(ranges)
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                (sa, na), (sb, nb) = ranges[a], ranges[b]
                if sa < sb + nb and sb < sa + na:
                    problems.append(f"evaluate.{a}_seed..+{a}_items ({sa}..{sa + na - 1}) overlaps evaluate.{b}_seed.."
                                    f"+{b}_items ({sb}..{sb + nb - 1}); every set needs its own seeds: move one")
        if ev.samples < 1 or any(k < 2 for k in ev.sample_counts):
            problems.append(f"evaluate.samples must be >= 1 and every evaluate.sample_counts >= 2 (a spread needs two "
                            f"samples), got {ev.samples} and {list(ev.sample_counts)}")
        if ev.opensr_border < 0 or ev.opensr_border % self.model.scale or 2 * ev.opensr_border >= self.hr_patch:
            problems.append(f"evaluate.opensr_border ({ev.opensr_border}) must be a multiple of the scale "
                            f"{self.model.scale} and leave pixels of the {self.hr_patch} px HR patches")
        if unknown := sorted(set(ev.extra_sets) - set(EXTRA_SETS)):
            problems.append(f"evaluate.extra_sets names unknown sets {unknown}; use some of {sorted(EXTRA_SETS)}")
        if not 0 <= ev.unseen_clouds <= 1:
            problems.append(f"evaluate.unseen_clouds is a probability, got {ev.unseen_clouds}")
        for name, build in (("unseen_scene", self.unseen_style), ("unseen_degradation", self.unseen_degradation_config)):
            try:
                build()
            except (TypeError, ValueError) as err:
                problems.append(f"evaluate.{name}: {err}")
        return problems

    # ------------------------------------------------------------------ derived
    @property
    def hr_patch(self) -> int:
        """HR patch side in pixels: the model's LR patch size times its scale."""
        return self.model.patch_size * self.model.scale

    def data_config(self):
        """:class:`training.data.DataConfig` of the ``data`` section."""
        from .data import DataConfig

        return DataConfig.from_dict(self.data)

    def degradation_config(self):
        """:class:`training.degradation.DegradationConfig` of the ``degradation`` section."""
        from .degradation import DegradationConfig

        return DegradationConfig.from_dict(self.degradation)

    def unseen_style(self):
        """:class:`xr_opensr.testing.SceneStyle` of ``evaluate.unseen_scene``."""
        from xr_opensr.testing import SceneStyle

        return SceneStyle.from_dict(self.evaluate.unseen_scene)

    def unseen_degradation_config(self):
        """:class:`training.degradation.DegradationConfig` of ``evaluate.unseen_degradation`` (factor from the model)."""
        from .degradation import DegradationConfig

        return DegradationConfig.from_dict({"factor": self.model.scale, **self.evaluate.unseen_degradation})

    # ------------------------------------------------------------------ (de)serialisation
    @classmethod
    def from_json(cls, path: str | Path) -> TrainConfig:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError as err:
            raise FileNotFoundError(f"training config not found: {path}") from err
        except json.JSONDecodeError as err:
            raise ValueError(f"training config {path} is not valid JSON: {err}") from err
        return cls.from_dict(data)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with top-level fields replaced; ``section={"key": value}`` updates inside a section."""
        kwargs: dict[str, Any] = {}
        for key, value in changes.items():
            current = getattr(self, key)
            if isinstance(value, dict) and dataclasses.is_dataclass(current):
                kwargs[key] = dataclasses.replace(current, **value)
            else:
                kwargs[key] = {**current, **value} if isinstance(value, dict) and isinstance(current, dict) else value
        return dataclasses.replace(self, **kwargs)

