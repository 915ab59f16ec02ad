#!/usr/bin/env bash
# Installs bubblewrap (Debian's package) when it is missing: the chat sandbox needs it.
set -euo pipefail
if command -v bwrap >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "[sandbox] installing bubblewrap" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq bubblewrap >/dev/null 2>&1 \
        || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq bubblewrap >/dev/null; }
elif command -v sudo >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    sudo apt-get install -y -qq bubblewrap
else
    echo "[sandbox] bubblewrap is missing: install it (Debian: apt-get install bubblewrap)" >&2
    exit 1
fi
