"""pytest fixtures for the local STAC API (tests/stac_server.py).

Registered from tests/conftest.py with ``pytest_plugins = ["conftest_stac"]`` (pytest puts tests/ on
``sys.path`` before it reads that conftest, as tests/ has no ``__init__.py``).

``stac_api`` (session scope) starts PostgreSQL + PostGIS, pgstac, stac-fastapi-pgstac under uvicorn
and the COG server, all on 127.0.0.1, once per test session; it stops them and removes their
folders at the end. It fails (does not skip) when the system or Python packages are missing.
"""

from __future__ import annotations

import importlib.util
import os

import pytest

_PROXY_VARS = ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")


def _bypass_proxies_for_loopback() -> dict[str, str | None]:
    """Add 127.0.0.1 to NO_PROXY (requests and GDAL's curl honour it); return the old values."""
    old = {name: os.environ.get(name) for name in ("NO_PROXY", "no_proxy")}
    if any(os.environ.get(v) for v in _PROXY_VARS):
        for name in ("NO_PROXY", "no_proxy"):
            current = [h for h in (old[name] or "").split(",") if h]
            os.environ[name] = ",".join([*current, "127.0.0.1", "localhost"])
    return old


def _restore(old: dict[str, str | None]) -> None:
    for name, value in old.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="session")
def stac_api(request):
    """The running local catalogue (``stac_server.LocalStac``): ``.url``, ``.scenes``, ``.http``..."""
    missing = [m for m in ("stac_fastapi.pgstac", "pypgstac", "uvicorn", "psycopg", "pystac_client",
                           "odc.stac") if importlib.util.find_spec(m.split(".")[0]) is None
               or importlib.util.find_spec(m) is None]
    if missing:
        pytest.fail(
            f"the local STAC API needs the Python packages {missing}: "
            'pip install -e ".[test,stac]"', pytrace=False
        )
    from stac_server import INSTALL_HINT, LocalStac, StacSetupError, find_postgres_bindir

    try:
        find_postgres_bindir()
    except StacSetupError as err:
        pytest.fail(str(err), pytrace=False)

    old_env = _bypass_proxies_for_loopback()
    request.addfinalizer(lambda: _restore(old_env))
    server = LocalStac()
    request.addfinalizer(server.stop)  # also after a partial start
    try:
        server.start()
    except StacSetupError as err:
        pytest.fail(f"the local STAC API did not start ({INSTALL_HINT}?):\n{err}", pytrace=False)
    return server
