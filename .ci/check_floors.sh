#!/usr/bin/env bash
# Install xr-opensr with every core and [stac] dependency at its declared minimum version
# (.ci/floors.txt) into a throw-away virtual environment, and run the tests that need nothing
# else. A `>=` in pyproject.toml that the code does not honour fails here.
# torch: the floor is the CPU build in pip's find-links (/opt/wheels) when there is one, else PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${FLOORS_VENV:-$(mktemp -d)/floors-venv}"
trap 'rm -rf "$venv"' EXIT
start=$SECONDS
python3 -m venv "$venv"
"$venv/bin/pip" install -q --constraint .ci/floors.txt -e ".[stac]" pytest hypothesis
echo "check_floors: installed the floors in $((SECONDS - start)) s:" \
    "$("$venv/bin/pip" list 2>/dev/null | grep -iE '^(numpy|xarray|dask|rioxarray|rasterio|odc-geo|odc-stac|pystac|pystac-client|torch|safetensors|affine) ' | tr -s ' ' | tr '\n' ';')"
"$venv/bin/python" -m pytest -q -p no:cacheprovider \
    tests/test_graph.py tests/test_testing.py tests/test_models.py tests/test_stac_real_items.py \
    -m "not stac and not slow"
echo "check_floors: done in $((SECONDS - start)) s"
