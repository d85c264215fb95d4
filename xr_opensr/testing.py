"""Seeded synthetic Sentinel-2-like scenes and georeferenced cubes for tests, notebooks and benchmarks.

* :func:`synthetic_scene` -- a 2.5 m "truth": (4, H, W) float32 reflectance in the model band order
  B04, B03, B02, B08 (red, green, blue, NIR) with land-cover parcels, texture, roads, field
  boundaries, water and, on request, clouds and nodata (NaN).
* :func:`bands20` -- plausible native 20 m bands (B05, B06, B07, B8A, B11, B12) for such a scene.
* :func:`s2_cube` -- that scene brought to a 10 m grid (Gaussian PSF + 4 x 4 area mean) as an
  xarray object laid out like real data: UTM CRS, pixel-centre coordinates, uint16 DN =
  reflectance x 10000 with nodata 0 (or float32 reflectance), DataArray with a ``band`` dim or
  Dataset with one variable per band (odc-stac), optional ``time`` dim; any of the ten bands, the
  20 m ones at 20 m and put on the 10 m grid by nearest neighbour (as odc-stac delivers them).
* :func:`demo_cube` -- a real 128 x 128 px Sentinel-2 L1C crop shipped with the package.

Everything is a pure function of its arguments (``numpy.random.SeedSequence``); nothing imports
torch.
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
import xarray as xr

from . import sensor
from ._config import Config, Rules
from .sentinel2 import GUIDED_BANDS, MODEL_BANDS, QUANTIFICATION, SR_BANDS, canonical_band

__all__ = ["BANDS", "LAND_COVER", "SceneStyle", "bands20", "demo_cube", "s2_cube", "synthetic_scene"]

#: band order of every array made here (and of the model): red, green, blue, NIR
BANDS = MODEL_BANDS
#: reflectance ranges (low, high) per land-cover class, in the order of :data:`BANDS`
LAND_COVER: dict[str, tuple[tuple[float, float], ...]] = {
    "cropland": ((0.03, 0.06), (0.06, 0.09), (0.03, 0.05), (0.25, 0.45)),
    "grassland": ((0.05, 0.08), (0.07, 0.10), (0.04, 0.06), (0.20, 0.30)),
    "forest": ((0.015, 0.035), (0.03, 0.055), (0.015, 0.03), (0.20, 0.32)),
    "bare_soil": ((0.11, 0.22), (0.08, 0.16), (0.06, 0.11), (0.17, 0.30)),
    "urban": ((0.08, 0.18), (0.08, 0.17), (0.07, 0.16), (0.11, 0.22)),
    "water": ((0.01, 0.04), (0.02, 0.06), (0.03, 0.07), (0.01, 0.03)),
}
_CLASS_WEIGHTS = {"cropland": 0.3, "grassland": 0.2, "forest": 0.15, "bare_soil": 0.18, "urban": 0.12,
                  "water": 0.05}
_ROOFS = (  # (B04, B03, B02, B08): clay tiles, light concrete / metal, dark bitumen
    (0.22, 0.12, 0.08, 0.26), (0.30, 0.29, 0.28, 0.32), (0.06, 0.06, 0.06, 0.08),
)
_ASPHALT = (0.09, 0.09, 0.085, 0.12)
_TRACK = (0.16, 0.13, 0.10, 0.22)
_CLOUD = (0.45, 0.46, 0.48, 0.47)
_CLOUD20 = (0.47, 0.47, 0.47, 0.47, 0.38, 0.30)  # B05, B06, B07, B8A, B11, B12: SWIR darker (ice/water)
#: where each 20 m band lies between red (0) and NIR (1): vegetation (a steep red edge), other cover
_EDGE_VEG = (0.12, 0.55, 0.88, 1.02)
_EDGE_FLAT = (0.24, 0.45, 0.70, 1.05)

#: default HR pixel size (m) of :func:`synthetic_scene`, and the 10 m grid of :func:`s2_cube`
HR_PIXEL_M = 2.5
LR_PIXEL_M = 10.0
#: Gaussian PSF (sigma, in 2.5 m pixels) used to bring scenes to 10 m here; together with the
#: 4 x 4 area mean its MTF at the 10 m Nyquist frequency is ~0.27 (Sentinel-2 10 m bands: 0.2-0.3)
PSF_SIGMA_HR = sensor.PSF_SIGMA_HR
DEFAULT_ORIGIN = (500_000.0, 4_400_000.0)  # top-left corner (m) of s2_cube's grid in its UTM zone

Seed = int | Sequence[int]


@dataclass(frozen=True)
class SceneStyle(Config):
    """How :func:`synthetic_scene` draws a landscape; the defaults give the scenes of every earlier
    version bit for bit (the training, validation and test scenes).

    Other settings make scenes of another domain (``training evaluate``'s unseen-domain set).

    Attributes
    ----------
    land_cover : relative frequency of each land-cover class of :data:`LAND_COVER` (missing
        classes: 0); None: the default mix (cropland 0.3, grassland 0.2, bare soil 0.18, forest
        0.15, urban 0.12, water 0.05).
    parcel_size_m : spacing of the parcels' Voronoi seeds in metres (122 m: fields of ~1.5 ha).
    texture_scale : factor on the length of every texture (sowing stripes, crowns, moisture
        gradients, pixel-scale grain).
    texture_strength : factor on the amplitude of every texture (0: flat parcels).
    cloud_cover : (low, high) range of the cloud cover drawn for ``clouds=True``.

    ``from_dict`` / ``to_dict`` (``evaluate.unseen_scene`` of a training config):
    :class:`xr_opensr._config.Config`, missing keys take the defaults.
    """

    WHERE, RULES = "SceneStyle", Rules(keys_name="SceneStyle")

    land_cover: dict[str, float] | None = None
    parcel_size_m: float = 122.0
    texture_scale: float = 1.0
    texture_strength: float = 1.0
    cloud_cover: tuple[float, float] = (0.15, 0.4)

    def __post_init__(self) -> None:
        problems = []
        if self.land_cover is not None:
            unknown = sorted(set(self.land_cover) - set(LAND_COVER))
            weights = list(self.land_cover.values())
            if unknown:
                problems.append(f"land_cover names unknown classes {unknown}; use {sorted(LAND_COVER)}")
            if any(not np.isfinite(v) or v < 0 for v in weights) or sum(weights) <= 0:
                problems.append(f"land_cover weights must be >= 0 with a positive sum, got {self.land_cover}")
        if not self.parcel_size_m > 0 or not self.texture_scale > 0 or not self.texture_strength >= 0:
            problems.append(f"parcel_size_m and texture_scale must be > 0 and texture_strength >= 0, got "
                            f"{self.parcel_size_m}, {self.texture_scale}, {self.texture_strength}")
        low, high = (float(v) for v in self.cloud_cover)
        if not 0 <= low <= high < 1:
            problems.append(f"cloud_cover must be a range (low, high) with 0 <= low <= high < 1, got {self.cloud_cover}")
        if problems:
            raise ValueError("invalid SceneStyle: " + "; ".join(problems) + " (see xr_opensr.testing.SceneStyle)")

    def class_weights(self) -> np.ndarray:
        """Probabilities of the classes in the order of :data:`LAND_COVER`'s default mix."""
        given = _CLASS_WEIGHTS if self.land_cover is None else self.land_cover
        probs = np.array([float(given.get(name, 0.0)) for name in _CLASS_WEIGHTS])
        return probs / probs.sum()



# --------------------------------------------------------------------------- HR scene


def synthetic_scene(shape_hr: tuple[int, int] = (256, 256), seed: Seed = 0, *, clouds: bool = False,
                    nodata_fraction: float = 0.0, pixel_size: float = HR_PIXEL_M,
                    style: SceneStyle | None = None) -> np.ndarray:
    """A seeded, Sentinel-2-like high-resolution scene of top-of-canopy reflectance.

    Land-cover parcels (a Voronoi partition, fields of ~1-2 ha) get class spectra from
    :data:`LAND_COVER` (cropland, grassland, forest, bare soil, urban with roofs and shadows,
    water), within-parcel texture (sowing stripes, crowns, soil moisture), field boundaries
    (hedgerows, tracks), roads and water bodies (a river or a pond). Feature sizes are in metres,
    so ``pixel_size`` changes the resolution, not the landscape.

    Parameters
    ----------
    shape_hr : (H, W) in pixels.
    seed : int or sequence of ints (a ``numpy.random.SeedSequence`` entropy). The land, the
        clouds and the nodata have independent streams: ``clouds=True`` only changes cloudy and
        shadowed pixels.
    clouds : add bright clouds (all bands ~0.3-0.6) and their shadows.
    nodata_fraction : fraction of pixels set to NaN in all bands, cut by a straight swath edge.
    pixel_size : metres per pixel (2.5 for the 4x super-resolution of the 10 m bands).
    style : land-cover mix, parcel size, texture scale and strength, cloud cover
        (:class:`SceneStyle`; None: the defaults).

    Returns
    -------
    numpy.ndarray (4, H, W) float32 reflectance in [0, 1], bands :data:`BANDS`, NaN = nodata.
    """
    h, w = (int(v) for v in shape_hr)
    if h < 4 or w < 4:
        raise ValueError(f"shape_hr must be at least (4, 4), got {shape_hr}")
    if not 0.0 <= nodata_fraction <= 1.0:
        raise ValueError(f"nodata_fraction must be in [0, 1], got {nodata_fraction}")
    style = style if style is not None else SceneStyle()
    land_ss, cloud_ss, nodata_ss = _seed_sequence(seed).spawn(3)
    scene = _land(np.random.default_rng(land_ss), h, w, pixel_size, style)
    if clouds:
        _add_clouds(scene, np.random.default_rng(cloud_ss), pixel_size, style.cloud_cover)
    if nodata_fraction > 0:
        _add_nodata(scene, np.random.default_rng(nodata_ss), nodata_fraction)
    return scene


def _seed_sequence(seed: Seed) -> np.random.SeedSequence:
    if isinstance(seed, np.random.SeedSequence):
        return seed
    entropy = [int(seed)] if np.ndim(seed) == 0 else [int(s) for s in seed]
    if any(s < 0 for s in entropy):
        raise ValueError(f"seed must be non-negative, got {seed}")
    return np.random.SeedSequence(entropy)


def _smooth_noise(rng: np.random.Generator, h: int, w: int, sigma_px: float) -> np.ndarray:
    """Zero-mean, unit-std Gaussian random field with correlation length ``sigma_px`` (periodic FFT)."""
    white = rng.standard_normal((h, w))
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    transfer = np.exp(-2.0 * (np.pi * sigma_px) ** 2 * (fy**2 + fx**2))
    field = np.fft.irfft2(np.fft.rfft2(white) * transfer, s=(h, w))
    field -= field.mean()
    return field / (field.std() + 1e-12)


def _spectrum(rng: np.random.Generator, name: str) -> np.ndarray:
    ranges = np.asarray(LAND_COVER[name])
    t = np.clip(rng.uniform() + rng.normal(0.0, 0.12, 4), 0.0, 1.0)
    return ranges[:, 0] + t * (ranges[:, 1] - ranges[:, 0])


def _land(rng: np.random.Generator, h: int, w: int, px: float, style: SceneStyle | None = None) -> np.ndarray:
    style = style if style is not None else SceneStyle()
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    classes = list(_CLASS_WEIGHTS)
    probs = style.class_weights()
    ts = style.texture_scale  # lengths of the textures (1.0: the defaults)

    # --- parcels: Voronoi cells of a jittered grid of seeds, one per ~1.5 ha (~120 m apart)
    cell = max(2.0, style.parcel_size_m / px)
    gy, gx = int(np.ceil(h / cell)) + 2, int(np.ceil(w / cell)) + 2
    seeds = (np.stack(np.mgrid[-1:gy - 1, -1:gx - 1], -1) + rng.uniform(0.0, 1.0, (gy, gx, 2))) * cell
    iy, ix = (yy // cell).astype(np.int64) + 1, (xx // cell).astype(np.int64) + 1
    label = np.zeros((h, w), np.int64)
    best = np.full((h, w), np.inf)
    for oy in (-1, 0, 1):  # the nearest seed is in the 3 x 3 neighbouring cells
        for ox in (-1, 0, 1):
            cy, cx = np.clip(iy + oy, 0, gy - 1), np.clip(ix + ox, 0, gx - 1)
            d = (yy - seeds[cy, cx, 0]) ** 2 + (xx - seeds[cy, cx, 1]) ** 2
            closer = d < best
            label[closer], best[closer] = (cy * gx + cx)[closer], d[closer]
    n_parcels = gy * gx
    kinds = rng.choice(len(classes), n_parcels, p=probs)
    lo_hi = np.asarray([LAND_COVER[name] for name in classes])[kinds]  # (parcels, band, 2)
    t = np.clip(rng.uniform(0, 1, (n_parcels, 1)) + rng.normal(0.0, 0.12, (n_parcels, 4)), 0.0, 1.0)
    specs = lo_hi[..., 0] + t * (lo_hi[..., 1] - lo_hi[..., 0])
    urban = kinds == classes.index("urban")  # gardens between the buildings (painted below)
    specs[urban] = 0.5 * specs[urban] + 0.5 * _spectrum(rng, "grassland")
    angle = rng.uniform(0, np.pi, n_parcels)[label]
    period = (rng.uniform(10.0 * ts, 24.0 * ts, n_parcels) / px)[label]  # tramlines / sowing pattern
    stripes = rng.uniform(0.03, 0.08, n_parcels)[label] * np.sin(
        2 * np.pi * (np.cos(angle) * xx + np.sin(angle) * yy) / period)

    smooth = _smooth_noise(rng, h, w, 25.0 * ts / px)  # moisture / biomass gradients (~25 m)
    fine = _smooth_noise(rng, h, w, 0.6 * ts)  # pixel-scale texture
    crowns = _smooth_noise(rng, h, w, 2.0 * ts / px)  # tree crowns (~2-4 m)
    texture = {
        "cropland": stripes + 0.05 * smooth,
        "grassland": 0.08 * smooth + 0.03 * fine,
        "forest": 0.18 * crowns + 0.05 * smooth,
        "bare_soil": 0.10 * smooth + 0.03 * fine,
        "urban": 0.10 * fine,
        "water": 0.03 * smooth,
    }
    kind_map = kinds[label]
    tex = np.zeros((h, w))
    for k, name in enumerate(classes):
        tex = np.where(kind_map == k, texture[name], tex)
    scene = specs[label].transpose(2, 0, 1) * (1.0 + style.texture_strength * tex)[None]

    # --- buildings with shadows in urban parcels
    cells = np.argwhere(kind_map == classes.index("urban"))
    if len(cells):
        n_build = max(1, int(len(cells) * px * px / 500.0))  # one house per ~500 m2
        for cy, cx in cells[rng.integers(0, len(cells), n_build)]:
            bh, bw = (max(1, int(round(v / px))) for v in rng.uniform(6.0, 22.0, 2))
            y0, x0 = max(0, cy - bh // 2), max(0, cx - bw // 2)
            roof = np.asarray(_ROOFS[rng.integers(len(_ROOFS))]) * rng.uniform(0.85, 1.15)
            sh = max(1, int(round(4.0 / px)))  # shadow towards the north-west (sun in the south-east)
            scene[:, max(0, y0 - sh):y0 + bh - sh, max(0, x0 - sh):x0 + bw - sh] *= 0.45
            scene[:, y0:y0 + bh, x0:x0 + bw] = roof[:, None, None]

    # --- field boundaries: hedgerows or tracks between some parcel pairs
    salt = int(rng.integers(1, 2**31))
    hedge = _spectrum(rng, "forest")
    edge_y = label[1:, :] != label[:-1, :]
    edge_x = label[:, 1:] != label[:, :-1]
    width = max(1, int(round(4.0 / px)))
    for edges, a, b, axis in ((edge_y, label[1:, :], label[:-1, :], 0), (edge_x, label[:, 1:], label[:, :-1], 1)):
        # a hash of the parcel pair: 50 % none (0), 30 % hedgerow (1), 20 % track (2)
        draw = ((np.minimum(a, b) * 73_856_093) ^ (np.maximum(a, b) * 19_349_663) ^ salt) % 10
        kinds_here = np.where(draw < 5, 0, np.where(draw < 8, 1, 2)) * edges
        for k, value in ((1, hedge), (2, np.asarray(_TRACK))):
            hit = np.zeros((h, w), bool)
            on = kinds_here == k
            if axis == 0:
                hit[1:, :] |= on
            else:
                hit[:, 1:] |= on
            for _ in range(width - 1):
                hit |= np.roll(hit, 1, axis=axis)
            scene[:, hit] = value[:, None] * (1 + 0.08 * fine[hit])[None, :]

    # --- water: a meandering river or a pond
    water = _spectrum(rng, "water")
    if rng.uniform() < 0.6:
        across, along, n_across = (yy, xx, h) if rng.uniform() < 0.5 else (xx, yy, w)
        centre = rng.uniform(0.2, 0.8) * n_across
        amp = rng.uniform(20.0, 60.0) / px
        wavelength = rng.uniform(150.0, 400.0) / px
        half = rng.uniform(4.0, 15.0) / px
        wet = np.abs(across - centre - amp * np.sin(2 * np.pi * along / wavelength + rng.uniform(0, 6.3))
                     - 3.0 * smooth) < half
    else:
        cy, cx = rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w
        ry, rx = rng.uniform(20.0, 60.0, 2) / px
        wet = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1 + 0.2 * smooth
    bank = wet ^ _dilate(wet, max(1, int(round(5.0 / px))))
    scene[:, bank] = hedge[:, None] * (1 + 0.1 * crowns[bank])[None, :]
    scene[:, wet] = water[:, None] * (1 + 0.04 * smooth[wet])[None, :]

    # --- roads: 1-2 straight roads of 5-8 m
    for _ in range(rng.integers(1, 3)):
        angle = rng.uniform(0, np.pi)
        offset = rng.uniform(0.2, 0.8) * (h * abs(np.cos(angle)) + w * abs(np.sin(angle)))
        dist = np.abs(np.cos(angle) * yy + np.sin(angle) * xx - offset)
        road = dist < rng.uniform(2.5, 4.0) / px
        scene[:, road] = np.asarray(_ASPHALT)[:, None] * (1 + 0.04 * fine[road])[None, :]

    return np.clip(scene, 1e-4, 1.0).astype(np.float32)


def _dilate(mask: np.ndarray, r: int) -> np.ndarray:
    out = mask.copy()
    for axis in (0, 1):
        grown = out.copy()
        for s in range(1, r + 1):
            grown |= np.roll(out, s, axis=axis) | np.roll(out, -s, axis=axis)
        out = grown
    return out


def _add_clouds(scene: np.ndarray, rng: np.random.Generator, px: float,
                cover: tuple[float, float] = (0.15, 0.4), spectrum: Sequence[float] = _CLOUD) -> None:
    """Bright clouds (cover drawn in ``cover``, default 15-40 %) with soft edges, and their shadows; in place.

    ``spectrum``: the clouds' reflectance per band of ``scene`` (the draws do not depend on it)."""
    _, h, w = scene.shape
    field = _smooth_noise(rng, h, w, 60.0 / px) + 0.25 * _smooth_noise(rng, h, w, 10.0 / px)
    threshold = np.quantile(field, 1.0 - rng.uniform(*cover))
    alpha = np.clip((field - threshold) / 0.5, 0.0, 1.0)
    brightness = rng.uniform(0.75, 1.25) * (1 + 0.1 * _smooth_noise(rng, h, w, 8.0 / px))
    cloud = np.clip(np.asarray(spectrum)[:, None, None] * brightness[None], 0.3, 0.6)
    dy, dx = (int(round(v / px)) for v in rng.uniform(40.0, 120.0, 2) * rng.choice([-1, 1], 2))
    shadow = np.roll(alpha, (dy, dx), axis=(0, 1))
    scene *= (1.0 - 0.55 * shadow)[None]
    scene[:] = (1.0 - alpha)[None] * scene + alpha[None] * cloud


def _add_nodata(scene: np.ndarray, rng: np.random.Generator, fraction: float) -> None:
    """NaN beyond a straight swath edge covering ``fraction`` of the pixels; in place."""
    _, h, w = scene.shape
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w]
    proj = np.cos(angle) * xx + np.sin(angle) * yy + 1e-6 * (yy * w + xx)  # ties broken: exact fraction
    n = int(round(fraction * h * w))
    if n:
        cut = np.argsort(proj, axis=None)[:n]
        scene[:, cut // w, cut % w] = np.nan


# --------------------------------------------------------------------------- 20 m bands


def bands20(scene: np.ndarray, seed: Seed = 0, *, pixel_size: float = HR_PIXEL_M) -> np.ndarray:
    """Plausible B05, B06, B07, B8A, B11, B12 reflectance for a scene of :data:`BANDS` (same grid).

    The red-edge bands and B8A lie between red and NIR, on a steep red edge where the scene is green
    (NDVI) and a straight line elsewhere; SWIR follows NIR and, on bare ground, red (B12 a fraction
    of B11, smaller over vegetation). Each band then gets its own smooth texture (moisture, ~20 m;
    2 % red edge, 6 % SWIR), so the 20 m bands are not a fixed combination of the 10 m bands.

    Parameters
    ----------
    scene : (4, H, W) float reflectance, bands :data:`BANDS` (NaN = nodata, kept).
    seed : the texture's seed.
    pixel_size : metres per pixel of ``scene``.

    Returns
    -------
    numpy.ndarray (6, H, W) float32 reflectance in [1e-4, 1], bands :data:`~xr_opensr.sentinel2.GUIDED_BANDS`.
    """
    red, nir = scene[0].astype(np.float64), scene[3].astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        veg = np.clip((nir - red) / (nir + red), 0.0, 1.0)
    out = [red + (v * a + (1 - v) * b) * (nir - red) for a, b, v in zip(_EDGE_VEG, _EDGE_FLAT, [veg] * 4)]
    swir16 = 0.55 * nir + 0.9 * red * (1.0 - veg)
    out += [swir16, swir16 * (0.45 + 0.4 * (1.0 - veg))]
    rng = np.random.default_rng(_seed_sequence(seed))
    h, w = red.shape
    amplitude = (0.02, 0.02, 0.02, 0.02, 0.06, 0.06)
    stack = [b * (1.0 + a * _smooth_noise(rng, h, w, 20.0 / pixel_size)) for b, a in zip(out, amplitude)]
    return np.clip(np.stack(stack), 1e-4, 1.0).astype(np.float32)


def _native20(hr: np.ndarray, ny: int, nx: int, phase: tuple[int, int]) -> np.ndarray:
    """(k, 4 ny, 4 nx) 2.5 m bands -> (k, ny, nx): the 20 m sensor model (PSF twice the 10 m one, 8 x 8
    area mean) on the 20 m grid whose blocks start at row/column ``phase``, repeated over 2 x 2 10 m
    pixels (nearest neighbour); the grid is padded by edge values where a 20 m pixel reaches past it."""
    py, px = phase
    pad = ((0, 0), (4 * py, 4 * ((ny + py) % 2)), (4 * px, 4 * ((nx + px) % 2)))
    coarse = sensor.degrade(np.pad(hr, pad, mode="edge"), 8, psf_sigma=2 * PSF_SIGMA_HR)
    fine = coarse.repeat(2, axis=-2).repeat(2, axis=-1)
    return fine[:, py:py + ny, px:px + nx]


def _band_ids(bands: Sequence[str]) -> list[str] | None:
    """The band ids of ``bands`` when every label names a distinct band of SR_BANDS, else None (labels
    of the four model bands in their order)."""
    ids = [canonical_band(b) for b in bands]
    if all(i in SR_BANDS for i in ids) and len(set(ids)) == len(ids):
        return [str(i) for i in ids]
    return None


# --------------------------------------------------------------------------- 10 m cube


def s2_cube(ny: int = 64, nx: int = 64, *, times: int | Sequence[Any] | None = None, seed: Seed = 0,
            dtype: Literal["uint16", "float32"] = "uint16", crs: str = "EPSG:32618",
            origin: tuple[float, float] = DEFAULT_ORIGIN, resolution: float = LR_PIXEL_M,
            chunks: Any = None, layout: Literal["dataarray", "dataset"] = "dataarray", nodata: int = 0,
            clouds: bool = False, nodata_fraction: float = 0.0, bands: Sequence[str] = BANDS,
            name: str = "reflectance") -> xr.DataArray | xr.Dataset:
    """A georeferenced Sentinel-2-like cube on a regular 10 m grid, built from :func:`synthetic_scene`.

    The scene is made at ``resolution / 4`` (2.5 m), blurred by a Gaussian PSF
    (:data:`PSF_SIGMA_HR`) and averaged over 4 x 4 pixels; a pixel touching nodata is nodata.

    Parameters
    ----------
    ny, nx : rows and columns of the 10 m grid.
    times : None (no time dim), a number of dates (from 2024-06-01 every 5 days) or a sequence of
        dates. Every date shows the same landscape with a small per-band gain change (and its own
        clouds / nodata when asked).
    seed : int or sequence of ints; the same arguments give the same cube.
    dtype : "uint16" (DN = round(reflectance x 10000), valid pixels >= 1, nodata = ``nodata``) or
        "float32" (reflectance, NaN = nodata).
    crs : a projected CRS in metres (UTM).
    origin : (x0, y0), the top-left corner of the grid (m).
    resolution : pixel size (m).
    chunks : passed to ``.chunk()`` (None: numpy-backed).
    layout : "dataarray" -> DataArray (``[time,] band, y, x``) with band labels; "dataset" ->
        Dataset with one variable per band (the odc-stac layout).
    clouds, nodata_fraction : see :func:`synthetic_scene`.
    bands : band labels: names of any of the ten bands (ids or common names, e.g. ``("B04", "B11")``
        or ``("red", "swir16")``) in any order, or four labels of the bands red, green, blue, NIR in
        that order. 20 m bands (:func:`bands20`) are made at 20 m (PSF twice the 10 m one, 8 x 8 area
        mean) on the grid of multiples of 20 m of the CRS and put on the 10 m grid by nearest neighbour:
        constant over 2 x 2 pixels, blocks starting at row/column 1 when ``origin`` is an odd multiple of
        10 m. The 10 m bands do not depend on which 20 m bands are asked for.

    Returns
    -------
    xarray.DataArray or xarray.Dataset with pixel-centre coordinates (x increasing, y
    decreasing), ``rio.crs`` and a ``rio.transform()`` equal to
    ``Affine(resolution, 0, x0, 0, -resolution, y0)``; uint16 data carry ``nodata`` and
    ``_FillValue`` attrs.
    """
    import rioxarray  # noqa: F401  (registers .rio)
    from affine import Affine

    if dtype not in ("uint16", "float32"):
        raise ValueError(f"dtype must be 'uint16' or 'float32', got {dtype!r}")
    if layout not in ("dataarray", "dataset"):
        raise ValueError(f"layout must be 'dataarray' or 'dataset', got {layout!r}")
    ids = _band_ids(bands)
    if ids is None and len(bands) != 4:
        raise ValueError(f"bands must name bands of {list(SR_BANDS)} or label the 4 bands red, green, blue, NIR, "
                         f"got {bands}")
    ids = ids if ids is not None else list(BANDS)
    picks = [SR_BANDS.index(b) for b in ids]
    want20 = any(b in GUIDED_BANDS for b in ids)
    if ny < 1 or nx < 1:
        raise ValueError(f"ny and nx must be >= 1, got {ny} x {nx}")
    stamps = _times(times)
    land_ss, extra_ss, band_ss = _seed_sequence(seed).spawn(3)  # the first two as before 20 m bands existed
    hr_px = resolution / 4.0
    hr_land = _land(np.random.default_rng(land_ss), 4 * ny, 4 * nx, hr_px)
    if want20:
        hr_land = np.concatenate([hr_land, bands20(hr_land, band_ss, pixel_size=hr_px)])
    x0, y0 = (float(v) for v in origin)
    phase = tuple(int(round(v / resolution)) % 2 for v in (y0, x0))
    layers = []
    for k, child in enumerate(extra_ss.spawn(1 if stamps is None else len(stamps))):
        gain_rng, cloud_rng, nodata_rng = (np.random.default_rng(s) for s in child.spawn(3))
        gain = np.ones(4) if k == 0 else 1.0 + gain_rng.normal(0.0, 0.03, 4)  # date 0: the scene as is
        if want20:
            gain = np.concatenate([gain, np.ones(6) if k == 0 else 1.0 + gain_rng.normal(0.0, 0.03, 6)])
        hr = hr_land * gain.astype(np.float32)[:, None, None]
        if clouds:
            _add_clouds(hr, cloud_rng, hr_px, spectrum=(*_CLOUD, *_CLOUD20) if want20 else _CLOUD)
        if nodata_fraction > 0:
            _add_nodata(hr, nodata_rng, nodata_fraction)
        lr = sensor.degrade(np.clip(hr[:4], 0.0, 1.0), 4, psf_sigma=PSF_SIGMA_HR)
        if want20:
            lr = np.concatenate([lr, _native20(np.clip(hr[4:], 0.0, 1.0), ny, nx, phase)])
        layers.append(lr[picks])
    data = layers[0] if stamps is None else np.stack(layers)
    if dtype == "uint16":
        dn = np.clip(np.round(np.nan_to_num(data, nan=0.0) * QUANTIFICATION), 1, 65_535).astype(np.uint16)
        dn[dn == nodata] = nodata + 1 if nodata < 65_535 else nodata - 1  # valid pixels never read as nodata
        data = np.where(np.isnan(data), np.uint16(nodata), dn)
    else:
        data = data.astype(np.float32)

    coords: dict[str, Any] = {
        "y": y0 - resolution * (np.arange(ny) + 0.5),
        "x": x0 + resolution * (np.arange(nx) + 0.5),
    }
    if stamps is not None:
        coords["time"] = stamps
    lead = [] if stamps is None else ["time"]
    transform = Affine(resolution, 0.0, x0, 0.0, -resolution, y0)
    attrs = {"description": f"synthetic Sentinel-2-like cube (xr_opensr.testing.s2_cube, seed={seed})"}
    if dtype == "uint16":
        attrs.update(nodata=nodata, units="DN (reflectance x 10000)")
    else:
        attrs.update(units="reflectance")

    if layout == "dataarray":
        obj: xr.DataArray | xr.Dataset = xr.DataArray(
            data, dims=[*lead, "band", "y", "x"], coords={**coords, "band": list(bands)}, name=name,
            attrs={**attrs, "long_name": tuple(bands)})
    else:
        obj = xr.Dataset(
            {b: xr.DataArray(data[..., i, :, :], dims=[*lead, "y", "x"], attrs=dict(attrs)) for i, b in enumerate(bands)},
            coords=coords, attrs={"description": attrs["description"]})
    obj = obj.rio.write_crs(crs).rio.write_transform(transform)
    if dtype == "uint16":
        if layout == "dataarray":
            obj = obj.rio.write_nodata(nodata, encoded=False)
        else:
            for b in bands:
                obj[b] = obj[b].rio.write_nodata(nodata, encoded=False)
    if chunks is not None:
        obj = obj.chunk(chunks)
    return obj


def _times(times: int | Sequence[Any] | None) -> pd.DatetimeIndex | None:
    if times is None:
        return None
    if isinstance(times, (int, np.integer)):
        if times < 1:
            raise ValueError(f"times must be >= 1 (or None for no time dim), got {times}")
        return pd.date_range("2024-06-01", periods=int(times), freq="5D")
    return pd.DatetimeIndex(pd.to_datetime(list(times)))


# --------------------------------------------------------------------------- real demo crop


DEMO_FILE = "demo_s2_lr.tif"


def demo_cube(chunks: Any = None) -> xr.DataArray:
    """The shipped real Sentinel-2 crop: 128 x 128 px at 10 m, bands B04, B03, B02, B08.

    Level-1C (top-of-atmosphere reflectance x 10000, uint16, nodata 0) in EPSG:32618, north of the
    held-out part of its scene; provenance and licence in ``xr_opensr/data/README.md``.

    Parameters
    ----------
    chunks : passed to ``rioxarray.open_rasterio`` (None: read into memory).

    Returns
    -------
    xarray.DataArray (band, y, x) uint16 with band labels, CRS, transform and ``_FillValue``/
    ``nodata`` 0: ready for ``.opensr.superresolve()``.
    """
    import rioxarray

    resource = importlib.resources.files("xr_opensr") / "data" / DEMO_FILE
    with importlib.resources.as_file(resource) as path:
        if not path.is_file():
            raise FileNotFoundError(f"the demo cube {path} is missing from this installation of xr_opensr")
        arr = rioxarray.open_rasterio(path, chunks=chunks, mask_and_scale=False)
        if chunks is None:
            arr = arr.load()
    labels = arr.attrs.get("long_name")
    labels = [labels] if isinstance(labels, str) else list(labels or BANDS)
    arr = arr.assign_coords(band=labels)
    arr.attrs["nodata"] = arr.attrs.get("_FillValue", 0)
    arr.name = "demo_s2_lr"
    return arr
