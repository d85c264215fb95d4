#!/usr/bin/env bash
# System packages the test suite needs (Debian/Ubuntu). Idempotent and quiet: installs only what is
# missing, prints one line when it installed something, the apt log only on failure.
#   postgresql-<v>, postgresql-<v>-postgis-3: PostgreSQL + PostGIS for the local STAC API
#   (stac-fastapi-pgstac + pypgstac) that tests/conftest_stac.py starts on 127.0.0.1.
# PG_VERSION selects the PostgreSQL major version (default 15, Debian 12's).
set -euo pipefail

PG_VERSION="${PG_VERSION:-15}"
PACKAGES=("postgresql-${PG_VERSION}" "postgresql-${PG_VERSION}-postgis-3")

missing=()
for pkg in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$pkg")
    fi
done
[ "${#missing[@]}" -eq 0 ] && exit 0

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    SUDO=(sudo)
fi
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
export DEBIAN_FRONTEND=noninteractive
if ! { "${SUDO[@]}" apt-get update -qq && \
       "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"; } >"$log" 2>&1; then
    cat "$log" >&2
    echo "install_system_deps.sh: could not install ${missing[*]}" >&2
    exit 1
fi
echo "installed: ${missing[*]}"
