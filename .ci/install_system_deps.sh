#!/usr/bin/env bash
# System packages the test suite needs (Debian/Ubuntu). Idempotent and quiet; run as root or via sudo.
#   postgresql-15-postgis-3: PostgreSQL + PostGIS for the local STAC API (stac-fastapi-pgstac) in tests/.
set -euo pipefail

PACKAGES=(postgresql-15 postgresql-15-postgis-3)

missing=()
for pkg in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$pkg")
    fi
done

if [ "${#missing[@]}" -eq 0 ]; then
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >/dev/null
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "installed: ${missing[*]}"
