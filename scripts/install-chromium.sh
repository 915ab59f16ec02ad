#!/usr/bin/env bash
# Installs Debian's chromium for the browser tests when it is missing (Playwright drives
# it through executable_path: no browser is ever downloaded by Playwright).
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
    exit 0
fi
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "[browser] installing chromium" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq chromium >/dev/null 2>&1 \
        || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq chromium >/dev/null; }
elif command -v sudo >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    sudo apt-get install -y -qq chromium
else
    echo "[browser] missing: chromium (Debian: apt-get install chromium)" >&2
    exit 1
fi
