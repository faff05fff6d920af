#!/usr/bin/env bash
# Installs everything the tests need on a fresh Debian machine with python3/pip.
# Idempotent: pip skips satisfied requirements, apt runs only when chromium is missing.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
# The pinned ComfyUI (comfyui/) and the reference cases recorded from the original code (reference/):
# beside the clone in this project's CI, anywhere else through TOONCRAFTER_SHARED.
shared="${TOONCRAFTER_SHARED:-$repo/../shared}"
if [ ! -f "$shared/comfyui/requirements.txt" ] || [ ! -d "$shared/reference" ]; then
    echo "error: the tests need the pinned ComfyUI and the reference cases in $shared (comfyui/, reference/): put them there or set TOONCRAFTER_SHARED to their folder (see docs/development.md)" >&2
    exit 1
fi
pip=(python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore)

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# A bare or newer torch requirement would trigger a multi-GB download; these pins come from
# local disk, and the constraints file keeps every later install from moving them.
printf 'torch==2.14.1\ntorchvision==0.29.1\n' > "$tmp/constraints.txt"
"${pip[@]}" torch==2.14.1 torchvision==0.29.1

grep -viE '^[[:space:]]*(torch|torchvision|torchaudio)[[:space:]]*([<>=!~;#[]|$)' \
    "$shared/comfyui/requirements.txt" > "$tmp/comfyui-requirements.txt"

"${pip[@]}" -c "$tmp/constraints.txt" \
    -r "$repo/requirements.txt" \
    -r "$tmp/comfyui-requirements.txt" \
    requests pytest playwright "import-linter>=2.17" \
    "scikit-image>=0.22" "lpips>=0.1.4" "ray[default]>=2.9" "peft>=0.13" "color-matcher>=0.5"

if [ ! -x /usr/bin/chromium ]; then
    sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium > /dev/null
fi
