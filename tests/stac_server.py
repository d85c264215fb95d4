"""A real, local STAC API for the tests: seeded Sentinel-2-like COGs behind stac-fastapi-pgstac.

Three parts, all bound to 127.0.0.1 and all removed again by :meth:`LocalStac.stop`:

* COGs written by seeded code (64 x 64 px at 10 m in EPSG:32632, bands B04/B03/B02/B08 as uint16
  DN with nodata 0; B05/B06/B07/B8A/B11/B12 as uint16 DN and SCL as uint8 at 20 m, 32 x 32 px, on
  the 20 m grid of the tile as in ESA's products), served by a threaded HTTP server that honours
  ``Range`` requests (GDAL reads COGs with range requests, as it does from S3 or Azure);
* a private PostgreSQL + PostGIS cluster (``initdb`` + ``pg_ctl`` in a temporary folder, run as the
  ``postgres`` OS user when we are root) migrated with pypgstac and loaded with the items;
* stac-fastapi-pgstac under uvicorn in a subprocess.

The scenes (``SCENES``) are the ground truth the tests compare against. Run
``python tests/stac_server.py`` to serve the same catalogue until Ctrl-C (for notebooks and demos).
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from functools import partial
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

from xr_opensr.sentinel2 import BANDS as S2
from xr_opensr.sentinel2 import GUIDED_BANDS, MODEL_BANDS

__all__ = [
    "COLLECTION_ES",
    "COLLECTION_PC",
    "EPSG",
    "SCENES",
    "LocalStac",
    "CogServerProcess",
    "RangeHTTPServer",
    "Scene",
    "StacSetupError",
    "find_postgres_bindir",
    "scene_dn",
]

INSTALL_HINT = "run `bash .ci/install_system_deps.sh` (as root, or with sudo)"

EPSG = 32632
SIZE = 64  # 10 m pixels per side
RES = 10.0
SCL_RES = 20.0
X0, Y0 = 500_000.0, 5_000_000.0  # upper-left corner of scene "A" (45.1 N, 9.0 E)

COLLECTION_ES = "sentinel-2-l2a"  # Earth Search v1 asset names: red, green, ..., rededge1, swir16, scl
COLLECTION_PC = "sentinel-2-l2a-pc"  # Planetary Computer asset names: B04, B03, ..., B05, B11, SCL

BANDS = MODEL_BANDS  # 10 m: B04, B03, B02, B08
BANDS20 = GUIDED_BANDS  # 20 m: B05, B06, B07, B8A, B11, B12
COMMON = {b: S2[b].common_name for b in (*BANDS, *BANDS20)}  # red, ..., rededge1, nir08, swir16, swir22
ES_KEYS = {**COMMON, "SCL": "scl"}

# SCL classes written into the scenes
SCL_NODATA, SCL_SATURATED, SCL_SHADOW, SCL_VEG, SCL_BARE, SCL_WATER = 0, 1, 3, 4, 5, 6
SCL_CLOUD_MED, SCL_CLOUD_HIGH, SCL_CIRRUS, SCL_SNOW = 8, 9, 10, 11


class StacSetupError(RuntimeError):
    """The local STAC API could not be set up (missing binaries, server did not come up)."""


# --------------------------------------------------------------------------------------------
# Scenes: the ground truth
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Scene:
    """One S2 L2A item of the local catalogue.

    ``files`` names the scene whose COGs the item points at (PC-style items reuse ES files, so
    both naming conventions must load to the same numbers).
    """

    id: str
    collection: str
    datetime: str
    cloud_cover: float
    baseline: str
    boa_offset_applied: bool | None  # Earth Search's flag; None = property absent (PC)
    col: int = 0  # position of the footprint, in scene widths east of X0
    cloudy: bool = False
    seed: int = 0
    files: str = ""

    @property
    def file_stem(self) -> str:
        return self.files or self.id

    @property
    def dn_offset(self) -> int:
        """The offset (DN) that turns this item's DN into reflectance * 10000."""
        major = int(self.baseline.split(".")[0])
        return -1000 if major >= 4 and not self.boa_offset_applied else 0

    @property
    def x0(self) -> float:
        return X0 + self.col * SIZE * RES

    def utm_bounds(self, inset: float = 0.0) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) in EPSG:32632 metres, shrunk by ``inset`` metres."""
        return (
            self.x0 + inset,
            Y0 - SIZE * RES + inset,
            self.x0 + SIZE * RES - inset,
            Y0 - inset,
        )

    def lonlat_bbox(self, inset: float = 0.0) -> tuple[float, float, float, float]:
        """Bounding box in degrees (west, south, east, north) of the footprint shrunk by ``inset``."""
        from rasterio.warp import transform_bounds

        return tuple(transform_bounds(f"EPSG:{EPSG}", "EPSG:4326", *self.utm_bounds(inset)))


SCENES: dict[str, Scene] = {
    s.id: s
    for s in [
        # clear, processing baseline 05.00, offset not applied -> reflectance = (DN - 1000) / 1e4
        Scene("S2A_32TMR_20240610_0_L2A", COLLECTION_ES, "2024-06-10T10:36:29Z", 3.5, "05.00",
              False, seed=1),
        # the same day, the next footprint east: baseline 05.00 but Earth Search applied the offset
        Scene("S2A_32TMR_20240610_1_L2A", COLLECTION_ES, "2024-06-10T10:36:31Z", 4.0, "05.00",
              True, col=1, seed=2),
        # cloudy, baseline 05.00
        Scene("S2B_32TMR_20240620_0_L2A", COLLECTION_ES, "2024-06-20T10:36:29Z", 87.0, "05.00",
              False, cloudy=True, seed=3),
        # clear, baseline 03.01 (before 2022-01-25): no offset -> reflectance = DN / 1e4
        Scene("S2A_32TMR_20210615_0_L2A", COLLECTION_ES, "2021-06-15T10:36:21Z", 1.0, "03.01",
              False, seed=4),
        # Planetary-Computer-style item (B04..., SCL) over the COGs of the first scene
        Scene("S2A_MSIL2A_20240610T103629_R008_T32TMR_20240611T000000", COLLECTION_PC,
              "2024-06-10T10:36:29Z", 3.5, "05.00", None, seed=1,
              files="S2A_32TMR_20240610_0_L2A"),
    ]
}


def scene_dn(scene: Scene) -> dict[str, np.ndarray]:
    """The DN written for a scene: 10 m bands (64, 64) uint16, 20 m bands (32, 32) uint16 and ``"SCL"``
    (32, 32) uint8 at 20 m.

    Every scene has a nodata corner (DN 0, SCL 0), a pixel of DN 500 and one of DN 1000 (negative
    and zero reflectance once the offset applies). Clear scenes carry one patch of each SCL class
    that is masked (0, 1, 3, 8, 9, 10) and of classes that are kept (5, 6, 11); cloudy scenes are
    cloud (8, 9) except for a clear patch in the upper-left corner.
    """
    rng = np.random.default_rng(scene.seed)
    out: dict[str, np.ndarray] = {}
    for i, band in enumerate(BANDS):
        dn = rng.integers(1001, 6000, (SIZE, SIZE), dtype=np.uint16) + np.uint16(100 * i)
        dn[0, 0] = 500
        dn[0, 1] = 1000
        dn[-8:, -8:] = 0
        out[band] = dn
    n = SIZE // 2
    rng20 = np.random.default_rng([scene.seed, 20])  # its own stream: the 10 m DN are as before
    for i, band in enumerate(BANDS20):
        dn = rng20.integers(1001, 6000, (n, n), dtype=np.uint16) + np.uint16(100 * i)
        dn[-4:, -4:] = 0
        out[band] = dn
    scl = np.full((n, n), SCL_VEG, np.uint8)
    if scene.cloudy:
        scl[:, :] = SCL_CLOUD_HIGH
        scl[n // 2 :, :] = SCL_CLOUD_MED
        scl[:4, :4] = SCL_VEG
    else:
        scl[0:4, 4:8] = SCL_SHADOW
        scl[4, 0] = SCL_SATURATED
        scl[10:14, 10:14] = SCL_CLOUD_MED
        scl[16:18, 0:6] = SCL_CLOUD_HIGH
        scl[20:22, 20:26] = SCL_CIRRUS
        scl[6:8, 20:24] = SCL_BARE
        scl[24:26, 2:6] = SCL_WATER
        scl[8, 28:31] = SCL_SNOW
    scl[-4:, -4:] = SCL_NODATA
    out["SCL"] = scl
    return out


# --------------------------------------------------------------------------------------------
# COGs and STAC documents
# --------------------------------------------------------------------------------------------
def write_cog(path: Path, data: np.ndarray, res: float, x0: float, y0: float, epsg: int = EPSG) -> None:
    """Write a single-band tiled COG (DEFLATE, 32 x 32 blocks) with nodata 0, in EPSG:``epsg``."""
    import rasterio
    from rasterio.transform import from_origin

    profile = {
        "driver": "COG",
        "width": data.shape[1],
        "height": data.shape[0],
        "count": 1,
        "dtype": data.dtype.name,
        "crs": f"EPSG:{epsg}",
        "transform": from_origin(x0, y0, res, res),
        "nodata": 0,
        "blocksize": 32,
        "compress": "deflate",
        "overviews": "none",
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data, 1)


def write_scene_cogs(folder: Path) -> None:
    """Write the COGs of every scene into ``folder`` as ``<files>_<BAND>.tif``."""
    for scene in SCENES.values():
        if scene.files:
            continue
        for band, data in scene_dn(scene).items():
            res = RES if data.shape[0] == SIZE else SCL_RES
            write_cog(folder / f"{scene.file_stem}_{band}.tif", data, res, scene.x0, Y0)


def _footprint(scene: Scene) -> dict:
    from rasterio.warp import transform_geom

    left, bottom, right, top = scene.utm_bounds()
    ring = [[left, top], [right, top], [right, bottom], [left, bottom], [left, top]]
    return transform_geom(f"EPSG:{EPSG}", "EPSG:4326", {"type": "Polygon", "coordinates": [ring]})


_EXTENSIONS = [
    "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
    "https://stac-extensions.github.io/projection/v1.1.0/schema.json",
    "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
]
COG_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"


def item_dict(scene: Scene, base_url: str) -> dict:
    """The STAC item of ``scene`` (Earth Search or Planetary Computer flavour by collection)."""
    geometry = _footprint(scene)
    xs = [p[0] for p in geometry["coordinates"][0]]
    ys = [p[1] for p in geometry["coordinates"][0]]
    pc = scene.collection == COLLECTION_PC
    assets = {}
    for band in (*BANDS, *BANDS20, "SCL"):
        res = RES if band in BANDS else SCL_RES
        n = int(SIZE * RES / res)
        raster = {"nodata": 0, "data_type": "uint8" if band == "SCL" else "uint16",
                  "spatial_resolution": res}
        asset = {
            "href": f"{base_url}/{scene.file_stem}_{band}.tif",
            "type": COG_TYPE,
            "title": band,
            "roles": ["data"] if band == "SCL" else ["data", "reflectance"],
            "proj:shape": [n, n],
            "proj:transform": [res, 0.0, scene.x0, 0.0, -res, Y0],
            "raster:bands": [raster],
        }
        if band != "SCL":
            asset["eo:bands"] = [{"name": band, "common_name": COMMON[band]}]
            if not pc and scene.dn_offset:  # what Earth Search v1 publishes (odc-stac ignores it)
                raster.update(scale=0.0001, offset=-0.1)
        assets[band if pc else ES_KEYS[band]] = asset
    properties = {
        "datetime": scene.datetime,
        "platform": "sentinel-2a" if scene.id.startswith("S2A") else "sentinel-2b",
        "constellation": "sentinel-2",
        "instruments": ["msi"],
        "eo:cloud_cover": scene.cloud_cover,
        "proj:epsg": EPSG,
        "s2:processing_baseline": scene.baseline,
        "s2:mgrs_tile": "32TMR",
    }
    if scene.boa_offset_applied is not None:
        properties["earthsearch:boa_offset_applied"] = scene.boa_offset_applied
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "stac_extensions": _EXTENSIONS,
        "id": scene.id,
        "collection": scene.collection,
        "geometry": geometry,
        "bbox": [min(xs), min(ys), max(xs), max(ys)],
        "properties": properties,
        "assets": assets,
        "links": [],
    }


def collection_dict(collection_id: str, scenes: list[Scene]) -> dict:
    """A minimal valid STAC collection covering ``scenes``."""
    boxes = [s.lonlat_bbox() for s in scenes]
    bbox = [min(b[0] for b in boxes), min(b[1] for b in boxes),
            max(b[2] for b in boxes), max(b[3] for b in boxes)]
    times = sorted(s.datetime for s in scenes)
    return {
        "type": "Collection",
        "stac_version": "1.0.0",
        "stac_extensions": [],
        "id": collection_id,
        "title": f"Synthetic Sentinel-2 L2A for xr-opensr tests ({collection_id})",
        "description": "Seeded synthetic S2-like scenes written by tests/stac_server.py.",
        "license": "CC0-1.0",
        "extent": {
            "spatial": {"bbox": [bbox]},
            "temporal": {"interval": [[times[0], times[-1]]]},
        },
        "links": [],
    }


# --------------------------------------------------------------------------------------------
# HTTP with Range requests
# --------------------------------------------------------------------------------------------
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


class _RangeHandler(BaseHTTPRequestHandler):
    """GET/HEAD of the files in one folder, honouring single ``Range: bytes=a-b`` requests."""

    protocol_version = "HTTP/1.1"

    def __init__(self, *args, root: Path, stats: dict, **kwargs):
        self.root = root
        self.stats = stats
        super().__init__(*args, **kwargs)

    def log_message(self, format, *args):  # noqa: A002 - silence the default stderr log
        pass

    def do_HEAD(self):
        self._serve(body=False)

    def do_GET(self):
        self._serve(body=True)

    def _send(self, status: int, headers: dict[str, str], payload: bytes, body: bool) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if body:
            self.wfile.write(payload)

    def _serve(self, body: bool) -> None:
        name = self.path.split("?", 1)[0].lstrip("/")
        if name == "_stats":  # request counts, for tests that check GDAL used range reads
            payload = json.dumps(self.stats).encode()
            self._send(HTTPStatus.OK, {"Content-Type": "application/json"}, payload, body)
            return
        path = (self.root / name).resolve()
        if "/" in name or not name or not path.is_file():
            self._send(HTTPStatus.NOT_FOUND, {}, b"not found", body)
            return
        data = path.read_bytes()
        size = len(data)
        headers = {"Content-Type": "image/tiff", "Accept-Ranges": "bytes"}
        spec = self.headers.get("Range")
        match = _RANGE.match(spec.strip()) if spec else None
        if spec is None or match is None:  # no range, or multi-range: the whole file (RFC 9110)
            self.stats["full"] += 1
            self._send(HTTPStatus.OK, headers, data, body)
            return
        first, last = match.groups()
        if first == "":  # suffix range: the last N bytes
            start, end = max(size - int(last or 0), 0), size - 1
        else:
            start, end = int(first), min(int(last) if last else size - 1, size - 1)
        if start >= size or start > end:
            headers["Content-Range"] = f"bytes */{size}"
            self._send(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE, headers, b"", body)
            return
        self.stats["range"] += 1
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        self._send(HTTPStatus.PARTIAL_CONTENT, headers, data[start : end + 1], body)


class RangeHTTPServer:
    """Serve one folder on ``http://127.0.0.1:<free port>`` from a daemon thread.

    Do not read from it with GDAL in the same process: rasterio holds the GIL in parts of
    ``rasterio.open`` while GDAL waits for the server thread. :class:`CogServerProcess` runs it
    in a subprocess.
    """

    def __init__(self, root: Path):
        self.stats = {"range": 0, "full": 0}
        handler = partial(_RangeHandler, root=Path(root).resolve(), stats=self.stats)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )

    def start(self) -> RangeHTTPServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(timeout=5)
        self._server.server_close()


def _stop_process(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


class CogServerProcess:
    """:class:`RangeHTTPServer` over ``folder`` in a subprocess (``python stac_server.py --cogs``)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def start(self, timeout: float = 30) -> CogServerProcess:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--cogs", str(self.folder)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        line = self.proc.stdout.readline().strip()  # the script's first line is its URL
        if not line.startswith("http://"):
            _stop_process(self.proc)
            raise StacSetupError(f"the COG server did not start: {line}{self.proc.stderr.read()}")
        self.url = line
        return self

    def stats(self) -> dict[str, int]:
        with urllib.request.urlopen(f"{self.url}/_stats", timeout=5) as r:
            return json.loads(r.read())

    def stop(self) -> None:
        _stop_process(self.proc)
        for stream in (self.proc.stdout, self.proc.stderr) if self.proc else ():
            stream.close()


def serve_cogs(folder: str) -> None:
    """Entry point of the COG server subprocess: print the URL, serve until SIGTERM."""
    import signal

    server = RangeHTTPServer(Path(folder)).start()
    print(server.url, flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    server.stop()


# --------------------------------------------------------------------------------------------
# PostgreSQL + PostGIS + pgstac, and the API
# --------------------------------------------------------------------------------------------
def find_postgres_bindir() -> Path:
    """The newest ``/usr/lib/postgresql/<v>/bin`` that has initdb/pg_ctl and PostGIS installed."""
    candidates = []
    for bindir in glob.glob("/usr/lib/postgresql/*/bin"):
        version = Path(bindir).parent.name
        tools = all(os.access(Path(bindir, t), os.X_OK) for t in ("initdb", "pg_ctl", "postgres"))
        postgis = Path(f"/usr/share/postgresql/{version}/extension/postgis.control").is_file()
        if tools and postgis and version.isdigit():
            candidates.append((int(version), Path(bindir)))
    if not candidates:
        raise StacSetupError(
            "The local STAC API needs PostgreSQL with PostGIS (initdb, pg_ctl and the postgis "
            f"extension under /usr/lib/postgresql/*/bin); none found. To fix: {INSTALL_HINT}."
        )
    return max(candidates)[1]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_postgres_user(cmd: list[str]) -> list[str]:
    """initdb refuses to run as root: run the server tools as the ``postgres`` OS user then."""
    if os.geteuid() != 0:
        return cmd
    runuser = shutil.which("runuser")
    if runuser:
        return [runuser, "-u", "postgres", "--", *cmd]
    return ["su", "postgres", "-s", "/bin/sh", "-c", " ".join(map(_shell_quote, cmd))]


def _shell_quote(arg: str) -> str:
    import shlex

    return shlex.quote(arg)


def _run(cmd: list[str], what: str, timeout: float = 60) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise StacSetupError(f"{what} failed ({' '.join(cmd)}):\n{proc.stdout}\n{proc.stderr}")


class PostgresCluster:
    """A throw-away PostgreSQL cluster in ``folder``: trust auth on 127.0.0.1 only."""

    def __init__(self):
        self.bindir = find_postgres_bindir()
        self.folder: Path | None = None
        self.port = free_port()
        self.dsn = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self.running = False

    @property
    def datadir(self) -> Path:
        assert self.folder is not None
        return self.folder / "data"

    def start(self) -> PostgresCluster:
        # its own temporary folder (not inside another one): as root, the postgres user must own
        # it and be able to enter every folder above it (the system temp folder is 1777)
        self.folder = Path(tempfile.mkdtemp(prefix="xr-opensr-pg-"))
        if os.geteuid() == 0:
            import pwd

            pw = pwd.getpwnam("postgres")
            os.chown(self.folder, pw.pw_uid, pw.pw_gid)
        initdb = [str(self.bindir / "initdb"), "-D", str(self.datadir), "-U", "postgres",
                  "-A", "trust", "-E", "UTF8", "--no-locale", "--no-sync"]
        _run(_as_postgres_user(initdb), "initdb")
        options = (f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.datadir} "
                   "-c fsync=off -c synchronous_commit=off -c full_page_writes=off")
        pg_ctl = [str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-l",
                  str(self.datadir / "server.log"), "-o", options, "-w", "-t", "60", "start"]
        self.running = True  # pg_ctl may have started the server even if it reports failure
        _run(_as_postgres_user(pg_ctl), "pg_ctl start", timeout=90)
        return self

    def stop(self) -> None:
        """Stop the server (fast, then immediate) and remove the cluster's folder."""
        if self.running:
            pg_ctl = [str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", "fast", "-w",
                      "-t", "30", "stop"]
            proc = subprocess.run(_as_postgres_user(pg_ctl), capture_output=True, text=True)
            if proc.returncode != 0:
                pg_ctl[pg_ctl.index("fast")] = "immediate"
                subprocess.run(_as_postgres_user(pg_ctl), capture_output=True, text=True)
            self.running = False
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None


def load_pgstac(dsn: str, collections: list[dict], items: list[dict]) -> None:
    """Install pgstac (``pypgstac migrate``) and insert the collections and items."""
    from pypgstac.db import PgstacDB
    from pypgstac.load import Loader, Methods
    from pypgstac.migrate import Migrate

    db = PgstacDB(dsn=dsn)
    try:
        Migrate(db).run_migration()
        loader = Loader(db=db)
        loader.load_collections(iter(collections), Methods.insert)
        loader.load_items(iter(items), Methods.insert)
    finally:
        db.close()


class StacApiProcess:
    """stac-fastapi-pgstac's ``create_app`` factory under uvicorn, in a subprocess."""

    def __init__(self, pg: PostgresCluster, folder: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.folder = Path(folder)
        self.log_path = self.folder / "uvicorn.log"
        self.proc: subprocess.Popen | None = None
        self.env = {
            **os.environ,
            # stac_fastapi.pgstac.config.PostgresSettings reads these (trust auth: any password)
            "PGUSER": "postgres",
            "PGPASSWORD": "unused",
            "PGHOST": "127.0.0.1",
            "PGPORT": str(pg.port),
            "PGDATABASE": "postgres",
            "DB_MIN_CONN_SIZE": "1",
            "DB_MAX_CONN_SIZE": "4",
        }
        self.env.pop("ENABLED_EXTENSIONS", None)  # all extensions: query, filter, sort, fields...

    def start(self, timeout: float = 60) -> StacApiProcess:
        cmd = [sys.executable, "-m", "uvicorn", "stac_fastapi.pgstac.app:create_app", "--factory",
               "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning"]
        with open(self.log_path, "wb") as log:
            # cwd is our folder, so pydantic-settings never picks up a stray .env file
            self.proc = subprocess.Popen(cmd, cwd=self.folder, env=self.env, stdout=log,
                                         stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise StacSetupError(f"uvicorn exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(f"{self.url}/collections", timeout=2) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.1)
        raise StacSetupError(f"the STAC API did not answer within {timeout} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        _stop_process(self.proc)


@dataclass
class LocalStac:
    """The whole local catalogue. ``start()`` it, use ``.url``, always ``stop()`` it.

    ``stop()`` is safe after a partial ``start()`` and removes every process and folder.
    """

    scenes: dict[str, Scene] = field(default_factory=lambda: dict(SCENES))
    folder: Path | None = None
    url: str = ""
    cog_url: str = ""
    http: CogServerProcess | None = None
    pg: PostgresCluster | None = None
    api: StacApiProcess | None = None
    startup_s: float = 0.0

    def start(self) -> LocalStac:
        t0 = time.perf_counter()
        self.folder = Path(tempfile.mkdtemp(prefix="xr-opensr-stac-"))
        cogs = self.folder / "cogs"
        cogs.mkdir()
        write_scene_cogs(cogs)
        self.http = CogServerProcess(cogs).start()
        self.cog_url = self.http.url
        self.pg = PostgresCluster()
        self.pg.start()
        by_collection: dict[str, list[Scene]] = {}
        for scene in self.scenes.values():
            by_collection.setdefault(scene.collection, []).append(scene)
        collections = [collection_dict(c, s) for c, s in by_collection.items()]
        items = [item_dict(s, self.cog_url) for s in self.scenes.values()]
        load_pgstac(self.pg.dsn, collections, items)
        self.api = StacApiProcess(self.pg, self.folder).start()
        self.url = self.api.url
        self.startup_s = time.perf_counter() - t0
        return self

    def stop(self) -> None:
        errors = []
        for part in (self.api, self.pg, self.http):
            if part is None:
                continue
            try:
                part.stop()
            except Exception as exc:  # keep going: the other parts must stop too
                errors.append(f"{type(part).__name__}: {exc}")
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None
        if errors:
            raise StacSetupError("stopping the local STAC API: " + "; ".join(errors))

    def __enter__(self) -> LocalStac:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()

    def scene(self, scene_id: str) -> Scene:
        return self.scenes[scene_id]

    def expected_reflectance(self, scene_id: str, band: str) -> np.ndarray:
        """(64, 64) float32: (DN + offset) / 10000, NaN where DN == 0 (no cloud masking)."""
        scene = self.scenes[scene_id]
        dn = scene_dn(scene)[band]
        out = (dn.astype(np.float32) + np.float32(scene.dn_offset)) / np.float32(10000)
        out[dn == 0] = np.nan
        return out


def main() -> None:  # pragma: no cover - manual use
    with LocalStac() as stac:
        print(f"STAC API on {stac.url} (COGs on {stac.cog_url}); started in {stac.startup_s:.1f} s")
        print(f"collections: {sorted({s.collection for s in stac.scenes.values()})}; Ctrl-C stops")
        try:
            while True:
                time.sleep(1)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":  # pragma: no cover
    if len(sys.argv) == 3 and sys.argv[1] == "--cogs":
        serve_cogs(sys.argv[2])
    else:
        main()
