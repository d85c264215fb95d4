"""xr_opensr.stac on real published Sentinel-2 L2A STAC items (tests/data/stac_items, sources in its README).

Each item keeps its properties and asset keys as published; only the hrefs of the assets a test reads
are pointed at small COGs written here (known DN) and served over 127.0.0.1 with Range requests
(tests/stac_server.py). The expected offset of each item is the provider's documented convention,
written below by hand, never taken from the code under test.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import pystac
import pytest
from stac_server import CogServerProcess, write_cog

from xr_opensr import stac
from xr_opensr.errors import BandError, InputError

DATA = Path(__file__).parent / "data" / "stac_items"
BANDS = ("B04", "B03", "B02", "B08")
N = 32  # 10 m pixels per side of each COG (SCL: N // 2 at 20 m)

V0 = {"B04": "B04", "B03": "B03", "B02": "B02", "B08": "B08", "SCL": "SCL"}  # Earth Search v0, PC
COMMON = {"B04": "red", "B03": "green", "B02": "blue", "B08": "nir", "SCL": "scl"}  # ES v1/c1, stactools
CDSE = {"B04": "B04_10m", "B03": "B03_10m", "B02": "B02_10m", "B08": "B08_10m", "SCL": "SCL_20m"}

# file stem -> (asset keys as published, offset in DN by the provider's convention, property named by the rule)
CASES = {
    "earth-search-v0_S2B_20EPT_20250731_0_L2A": (V0, 0, "sentinel:boa_offset_applied"),
    "earth-search-v0_S2A_28QCH_20200714_0_L2A": (V0, 0, "sentinel:product_id"),  # N0214 in the product id
    "earth-search-v1_S2B_20EPT_20250731_0_L2A": (COMMON, 0, "earthsearch:boa_offset_applied"),
    "earth-search-v1_S2A_13TDE_20231008_0_L2A": (COMMON, 0, "earthsearch:boa_offset_applied"),
    "earth-search-c1_S2B_T20EPT_20250731T131905_L2A": (COMMON, -1000, "s2:processing_baseline"),
    "planetary-computer_S2B_MSIL2A_20190629T212529_R043_T06VVN_20201006T080531":
        (V0, 0, "s2:processing_baseline"),  # 02.12
    "cdse_S2C_MSIL2A_20250330T100051_N0511_R122_T33UWP_20250330T145914": (CDSE, -1000, "processing:version"),
    "sinergise_S2A_OPER_MSI_L2A_TL_2APS_20230602T025701_A041483_T01WCR":
        (COMMON, -1000, "sentinel2:processing_baseline"),
    "sinergise_S2B_OPER_MSI_L2A_TL_2BPS_20230512T234921_A032288_T01VCG":
        (COMMON, -1000, "sentinel2:processing_baseline"),
    "sinergise_S2B_OPER_MSI_L2A_TL_2BPS_20230513T005426_A032288_T01VCG":
        (COMMON, -1000, "sentinel2:processing_baseline"),
    "stactools_S2A_T01WCP_20230625T234624_L2A": (COMMON, -1000, "s2:processing_baseline"),  # STAC 1.1
    "stactools_S2B_T33XWJ_20220413T150756_L2A": (COMMON, -1000, "s2:processing_baseline"),  # 04.00, 1.1
    # ESA's reprocessing (baseline 05.00) of a 2020 acquisition: the offset applies before 2022 too
    "stactools_S2B_OPER_MSI_L2A_TL_S2RP_20230315T224658_A018417_T01VCG": (COMMON, -1000, "s2:processing_baseline"),
}
# Three catalogues' copies of one ESA product; Earth Search removed the offset from its v0/v1 COGs
SCENE_20EPT = ("earth-search-v0_S2B_20EPT_20250731_0_L2A", "earth-search-v1_S2B_20EPT_20250731_0_L2A",
               "earth-search-c1_S2B_T20EPT_20250731T131905_L2A")
CDSE_STEM = "cdse_S2C_MSIL2A_20250330T100051_N0511_R122_T33UWP_20250330T145914"
INSIDE_FOOTPRINT = {*SCENE_20EPT, CDSE_STEM}
PAIR_T01VCG = ("sinergise_S2B_OPER_MSI_L2A_TL_2BPS_20230512T234921_A032288_T01VCG",
               "sinergise_S2B_OPER_MSI_L2A_TL_2BPS_20230513T005426_A032288_T01VCG")


def read_item(stem: str) -> dict:
    return json.loads((DATA / f"{stem}.json").read_text())


def grid(stem: str) -> tuple[int, float, float]:
    """(EPSG, x0, y0) of the item's COGs, on the published grid of its red band: at the tile's
    upper-left corner, or (items searched through the API) around a point inside the footprint."""
    item = read_item(stem)
    asset = item["assets"][CASES[stem][0]["B04"]]
    code = item["properties"].get("proj:epsg") or asset.get("proj:code") or item["properties"]["proj:code"]
    epsg = int(str(code).removeprefix("EPSG:"))
    tx, ty = float(asset["proj:transform"][2]), float(asset["proj:transform"][5])
    if stem not in INSIDE_FOOTPRINT:
        return epsg, tx, ty
    from rasterio.warp import transform
    from shapely.geometry import shape

    source = SCENE_20EPT[0] if stem in SCENE_20EPT else stem  # the copies share one place
    point = shape(read_item(source)["geometry"]).representative_point()
    (x,), (y,) = transform("EPSG:4326", f"EPSG:{epsg}", [point.x], [point.y])
    return epsg, tx + 20 * ((x - tx) // 20) - 5 * N, ty - 20 * ((ty - y) // 20) + 5 * N


def dn(stem: str) -> dict[str, np.ndarray]:
    """DN written for an item: bands (N, N) uint16 with a nodata corner, SCL (N/2, N/2) with a cloud.

    The 20EPT copies share one scene: the c1 copy holds ESA's DN D (offset not removed), the
    Earth Search v0/v1 copies D - 1000 (offset removed), so all three mean the same reflectance;
    the c1 copy differs by +7 DN in one block, to see which copy a mosaic took.
    """
    scene = "20EPT" if stem in SCENE_20EPT else stem
    rng = np.random.default_rng(zlib.crc32(scene.encode()))
    out = {}
    for i, band in enumerate(BANDS):
        d = rng.integers(1001, 6000, (N, N)).astype(np.int32) + 100 * i
        if stem in SCENE_20EPT[:2]:
            d -= 1000
        elif stem == SCENE_20EPT[2]:
            d[8:16, 8:16] += 7
        d[-4:, -4:] = 0
        out[band] = d.astype(np.uint16)
    scl = np.full((N // 2, N // 2), 4, np.uint8)
    r = zlib.crc32(stem.encode()) % 10
    scl[r : r + 3, r : r + 3] = 9  # high-probability cloud, different place per item
    scl[-2:, -2:] = 0
    out["SCL"] = scl
    return out


def expected(stem: str, offset: int | None = None) -> np.ndarray:
    """(4, N, N) float32 reflectance: (DN + offset) / 10000, NaN at nodata and SCL-masked pixels."""
    values = dn(stem)
    offset = CASES[stem][1] if offset is None else offset
    scl = np.repeat(np.repeat(values["SCL"], 2, 0), 2, 1)
    out = []
    for band in BANDS:
        refl = (values[band].astype(np.float32) + np.float32(offset)) / np.float32(10000)
        refl[(values[band] == 0) | np.isin(scl, [0, 1, 3, 8, 9, 10])] = np.nan
        out.append(refl)
    return np.stack(out)


def on_grid(truth: np.ndarray, da, x0: float, y0: float) -> np.ndarray:
    """``truth`` (N, N) sampled at the pixel centres of ``da`` (y, x); NaN outside the COG."""
    cols = np.floor((da.x.values - x0) / 10).astype(int)
    rows = np.floor((y0 - da.y.values) / 10).astype(int)
    padded = np.full((N + 2, N + 2), np.nan, np.float32)
    padded[1:-1, 1:-1] = truth
    return padded[np.ix_(np.clip(rows + 1, 0, N + 1), np.clip(cols + 1, 0, N + 1))]


def lonlat_bbox(stem: str, inset: float = 5.0) -> tuple[float, float, float, float]:
    from rasterio.warp import transform_bounds

    epsg, x0, y0 = grid(stem)
    return tuple(transform_bounds(f"EPSG:{epsg}", "EPSG:4326", x0 + inset, y0 - N * 10 + inset,
                                  x0 + N * 10 - inset, y0 - inset))


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """Every item as a dict (published JSON, data hrefs pointed at the local COGs), and the server."""
    folder = tmp_path_factory.mktemp("real-cogs")
    for stem in CASES:
        epsg, x0, y0 = grid(stem)
        for band, data in dn(stem).items():
            res = 20.0 if band == "SCL" else 10.0
            write_cog(folder / f"{stem}_{band}.tif", data, res, x0, y0, epsg=epsg)
    (folder / "es-v0-landing.json").write_text((DATA / "earth-search-v0_landing-page.json").read_text())
    server = CogServerProcess(folder).start()
    items = {}
    for stem, (keys, _, _) in CASES.items():
        item = read_item(stem)
        for band, key in keys.items():
            item["assets"][key]["href"] = f"{server.url}/{stem}_{band}.tif"
        items[stem] = item
    yield items, server
    server.stop()


def as_item(d: dict) -> pystac.Item:
    return pystac.Item.from_dict(json.loads(json.dumps(d)), preserve_dict=False)


# --------------------------------------------------------------------------------- metadata only
@pytest.mark.parametrize("stem", list(CASES))
def test_real_item_offset_rule_follows_the_provider_convention(stem):
    item = pystac.Item.from_dict(read_item(stem))
    offset, rule = stac.offset_rule(item)
    assert offset == CASES[stem][1], rule
    assert CASES[stem][2] in rule
    assert stac.processing_offset(item) == offset


def test_real_items_keep_their_published_keys():
    """The files are the published JSON: the keys each convention relies on are there, untouched."""
    v0 = read_item(SCENE_20EPT[0])["properties"]
    assert v0["sentinel:boa_offset_applied"] is True and v0["sentinel:processing_baseline"] == "05.11"
    assert read_item(SCENE_20EPT[2])["properties"]["s2:processing_baseline"] == "05.11"
    assert "s2:processing_baseline" not in read_item("earth-search-v0_S2A_28QCH_20200714_0_L2A")["properties"]
    cdse = read_item("cdse_S2C_MSIL2A_20250330T100051_N0511_R122_T33UWP_20250330T145914")
    assert cdse["stac_version"] == "1.1.0" and cdse["properties"]["processing:version"] == "05.11"
    stac11 = read_item("stactools_S2A_T01WCP_20230625T234624_L2A")
    assert stac11["stac_version"] == "1.1.0" and "proj:epsg" not in stac11["properties"]
    assert stac11["properties"]["proj:code"] == "EPSG:32601"
    reprocessed = read_item("stactools_S2B_OPER_MSI_L2A_TL_S2RP_20230315T224658_A018417_T01VCG")["properties"]
    assert reprocessed["datetime"].startswith("2020-") and reprocessed["s2:processing_baseline"] == "05.00"


# --------------------------------------------------------------------------------- loading
@pytest.mark.parametrize("stem", list(CASES))
def test_real_item_loads_exact_reflectance(served, stem):
    items, _ = served
    ds = stac.load_s2([as_item(items[stem])], bbox=lonlat_bbox(stem), chunks={"x": 16, "y": 16})
    epsg, x0, y0 = grid(stem)
    assert ds.rio.crs.to_epsg() == epsg
    assert (float(ds.x[0]) - x0) % 10 == 5 and abs(float(ds.x[1] - ds.x[0])) == 10  # the 10 m grid
    got = ds.compute()
    truth = expected(stem)
    for b, band in enumerate(BANDS):
        np.testing.assert_array_equal(got[band].values[0], on_grid(truth[b], got, x0, y0))
    assert np.isfinite(got.B04.values).sum() > N * N / 2
    log = json.loads(got.attrs["offset_rules"])
    assert [e["offset_dn"] for e in log[0]["items"]] == [CASES[stem][1]]
    assert CASES[stem][2] in log[0]["items"][0]["rule"]


def test_mixed_provider_copies_of_one_scene_deduplicated_first_given_wins(served):
    items, _ = served
    v0, v1, c1 = (as_item(items[s]) for s in SCENE_20EPT)
    box = lonlat_bbox(SCENE_20EPT[0])
    ds = stac.load_s2([v0, v1, c1], bbox=box).compute()
    assert ds.sizes["time"] == 1
    dropped = json.loads(ds.attrs["duplicates_dropped"])
    assert len(dropped) == 2 and all("duplicate of sentinel-s2-l2a-cogs/" in d for d in dropped)
    same = expected(SCENE_20EPT[0])  # v0: (D - 1000 + 0) / 1e4 ...
    np.testing.assert_allclose(expected(SCENE_20EPT[2])[:, :8, :8], same[:, :8, :8])  # ... = c1's (D - 1000) / 1e4
    epsg, x0, y0 = grid(SCENE_20EPT[0])
    np.testing.assert_array_equal(ds.B04.values[0], on_grid(same[0], ds, x0, y0))

    # the caller's order decides, whatever the offsets: c1 (-1000) first, or v1 (0) first
    for first, second, stem in [(c1, v1, SCENE_20EPT[2]), (v1, c1, SCENE_20EPT[1])]:
        out = stac.load_s2([first, second], bbox=box).compute()
        log = json.loads(out.attrs["offset_rules"])
        assert [e["id"] for e in log[0]["items"]] == [first.id]
        np.testing.assert_array_equal(out.B04.values[0], on_grid(expected(stem)[0], out, x0, y0))


def test_mosaic_order_is_the_order_given_not_time_or_id(served):
    """Two partial granules of one acquisition (not duplicates): the first valid pixel wins."""
    items, _ = served
    a, b = (as_item(items[s]) for s in PAIR_T01VCG)
    box = lonlat_bbox(PAIR_T01VCG[0])
    epsg, x0, y0 = grid(PAIR_T01VCG[0])
    assert grid(PAIR_T01VCG[1]) == (epsg, x0, y0)  # published on the same grid
    for order in ((0, 1), (1, 0)):
        pair = [(a, b)[i] for i in order]
        out = stac.load_s2(pair, bbox=box).compute()
        assert out.sizes["time"] == 1 and json.loads(out.attrs["duplicates_dropped"]) == []
        first, second = (on_grid(expected(PAIR_T01VCG[i])[0], out, x0, y0) for i in order)
        want = np.where(np.isfinite(first), first, second)
        np.testing.assert_array_equal(out.B04.values[0], want)
        assert np.isfinite(first).sum() < np.isfinite(want).sum()  # the second filled the first's gaps


# ------------------------------------------------------------------ projection fields, extension not declared
def without(item: dict, prefix: str) -> dict:
    """A copy of a published item dict without its projection extension URL in ``stac_extensions``, and
    (``prefix="proj:"``) without any ``proj:`` field on the item or its assets too."""
    out = json.loads(json.dumps(item))
    out["stac_extensions"] = [uri for uri in out["stac_extensions"] if "/projection/" not in uri]
    if prefix:
        for fields in (out["properties"], *out["assets"].values()):
            for key in [k for k in fields if k.startswith(prefix)]:
                del fields[key]
    return out


# proj:epsg in the properties + shape/transform per asset (STAC 1.0); proj:code per asset (CDSE, 1.1);
# proj:code in the properties + shape/transform per asset (stactools, 1.1)
UNDECLARED = ["earth-search-v1_S2A_13TDE_20231008_0_L2A", CDSE_STEM, "stactools_S2A_T01WCP_20230625T234624_L2A"]


@pytest.mark.parametrize("stem", UNDECLARED)
def test_item_with_proj_fields_but_no_projection_extension_loads(served, stem):
    items, _ = served
    item = as_item(without(items[stem], ""))
    assert not any("projection" in uri for uri in item.stac_extensions)
    ds = stac.load_s2([item], bbox=lonlat_bbox(stem), chunks={"x": 16, "y": 16})  # odc-stac: "Failed to auto-guess"
    epsg, x0, y0 = grid(stem)
    assert ds.rio.crs.to_epsg() == epsg
    got = ds.compute()
    truth = expected(stem)
    for b, band in enumerate(BANDS):
        np.testing.assert_array_equal(got[band].values[0], on_grid(truth[b], got, x0, y0))
    assert np.isfinite(got.B04.values).sum() > N * N / 2
    assert not any("projection" in uri for uri in item.stac_extensions)  # the caller's item is left as it was


def test_item_without_projection_fields_needs_crs_and_resolution(served):
    items, _ = served
    stem = UNDECLARED[0]
    item = as_item(without(items[stem], "proj:"))
    with pytest.raises(InputError, match=r"items \['S2A_13TDE_20231008_0_L2A'\] carry no projection information.*"
                                         r"proj:shape and proj:transform.*load_s2\(items, crs='EPSG:\d+', "
                                         r"resolution=10\)"):
        stac.load_s2([item], bbox=lonlat_bbox(stem))
    epsg, x0, y0 = grid(stem)
    ds = stac.load_s2([item], bbox=lonlat_bbox(stem), crs=f"EPSG:{epsg}", resolution=10).compute()
    truth = expected(stem)
    for b, band in enumerate(BANDS):
        np.testing.assert_array_equal(ds[band].values[0], on_grid(truth[b], ds, x0, y0))
    assert np.isfinite(ds.B04.values).sum() > N * N / 2


# --------------------------------------------------------------------------------- errors
def test_missing_asset_names_the_keys_and_the_asset_map(served):
    items, _ = served
    v1 = as_item(items[SCENE_20EPT[1]])
    del v1.assets["red"]
    with pytest.raises(BandError, match=r"no asset for band B04 \(looked for \['red', 'B04', 'B04_10m'\]; "
                                        r"it has the assets \[.*'red-jp2'.*assets=\{'B04': '<key>'"):
        stac.load_s2([v1])
    lazy = stac.load_s2([v1], assets={"B04": "red-jp2"}, bands=("B04",), mask_clouds=False,
                        bbox=lonlat_bbox(SCENE_20EPT[1]))
    assert list(lazy.data_vars) == ["B04"]
    with pytest.raises(BandError, match=r"looked for \['nope'\]"):
        stac.load_s2([v1], assets={"B04": "nope"})
    no_scl = as_item(items["cdse_S2C_MSIL2A_20250330T100051_N0511_R122_T33UWP_20250330T145914"])
    del no_scl.assets["SCL_20m"]
    with pytest.raises(BandError, match=r"no SCL asset .*'B04_10m'.*assets=\{'SCL': '<key>'\}.*mask_clouds=False"):
        stac.load_s2([no_scl])
    with pytest.raises(InputError, match=r"assets must map band names to asset keys"):
        stac.load_s2([v1], assets=["red-jp2"])


def test_non_conformant_api_is_named_as_the_cause(served):
    """Earth Search v0's landing page (recorded response, no conformsTo) served on 127.0.0.1."""
    _, server = served
    with pytest.raises(InputError, match=r"does not declare the STAC API item-search conformance class "
                                         r"\(its landing page conformsTo: missing\).*Earth Search v0"):
        stac.search((-61.18, -60.43, -61.17, -60.42), "2025-07-31", url=f"{server.url}/es-v0-landing.json")


# --------------------------------------------------------------------------------- the STAC API
def _collection(collection_id: str, items: list[dict]) -> dict:
    return {"type": "Collection", "stac_version": "1.0.0", "id": collection_id, "license": "proprietary",
            "description": f"Real published items of {collection_id} (tests/data/stac_items)", "links": [],
            "extent": {"spatial": {"bbox": [[-180, -90, 180, 90]]},
                       "temporal": {"interval": [[min(i["properties"]["datetime"] for i in items), None]]}}}


@pytest.mark.stac
def test_real_items_search_load_superresolve_through_pgstac(stac_api, served):
    """The 20EPT copies of three catalogues and the CDSE item go into the local pgstac, then
    search -> load_s2 -> superresolve (tiny model) as a user would."""
    from pypgstac.db import PgstacDB
    from pypgstac.load import Loader, Methods

    import xr_opensr  # noqa: F401  (registers .opensr)

    items, _ = served
    stems = [*SCENE_20EPT, "cdse_S2C_MSIL2A_20250330T100051_N0511_R122_T33UWP_20250330T145914"]
    by_collection: dict[str, list[dict]] = {}
    for stem in stems:
        by_collection.setdefault(items[stem]["collection"], []).append(items[stem])
    db = PgstacDB(dsn=stac_api.pg.dsn)
    try:
        loader = Loader(db=db)
        loader.load_collections(iter([_collection(c, i) for c, i in by_collection.items()]), Methods.upsert)
        loader.load_items(iter([items[s] for s in stems]), Methods.upsert)
    finally:
        db.close()

    box = lonlat_bbox(SCENE_20EPT[0])
    found = stac.search(box, "2025-07-31", url=stac_api.url, collection=list(by_collection), max_cloud=None)
    assert sorted(it.collection_id for it in found) == ["sentinel-2-c1-l2a", "sentinel-2-l2a",
                                                         "sentinel-s2-l2a-cogs"]
    ds = stac.load_s2(found, bbox=box)
    assert len(json.loads(ds.attrs["duplicates_dropped"])) == 2
    stem = {s: s for s in SCENE_20EPT}[next(s for s in SCENE_20EPT if read_item(s)["id"] == found[0].id
                                             and read_item(s)["collection"] == found[0].collection_id)]
    epsg, x0, y0 = grid(stem)
    np.testing.assert_array_equal(ds.B04.values[0], on_grid(expected(stem)[0], ds, x0, y0))
    out = ds.opensr.superresolve(samples=2, steps=2, model="tiny")
    assert out.sr.sizes["y"] == 4 * ds.sizes["y"] and out.sr.sizes["x"] == 4 * ds.sizes["x"]
    assert out.sr.rio.crs.to_epsg() == epsg and np.isfinite(out.sr.values).mean() > 0.5

    cdse_stem = stems[-1]
    cbox = lonlat_bbox(cdse_stem)
    cdse = stac.search(cbox, "2025-03-30", url=stac_api.url, max_cloud=None)
    assert [it.id for it in cdse] == [read_item(cdse_stem)["id"]]
    cds = stac.load_s2(cdse, bbox=cbox)
    epsg, x0, y0 = grid(cdse_stem)
    np.testing.assert_array_equal(cds.B04.values[0], on_grid(expected(cdse_stem)[0], cds, x0, y0))
    sr = cds.opensr.superresolve(samples=2, steps=2, model="tiny").sr
    assert sr.sizes["x"] == 4 * cds.sizes["x"] and np.isfinite(sr.values).mean() > 0.5
