#!/usr/bin/env bash
# The GPU measurements of the speed/memory work in one go (about 10 minutes on an H200):
# 16 frames 320x512, 50 and 25 steps, fp16 and bf16, fp8 weight storage, channels-last, and
# torch.compile. Each run writes its JSON to $OUT (or benchmarks/results/) named after the card.
#
#   bash benchmarks/gpu_check.sh                  # everything
#   bash benchmarks/gpu_check.sh eager            # without the compile runs
#   COMFY=/path/to/ComfyUI bash benchmarks/gpu_check.sh   # also the nodes under ComfyUI, normal
#                                                  # and with a 6 GiB budget under --lowvram
set -uo pipefail
cd "$(dirname "$0")/.."

out="${OUT:-benchmarks/results}"
mkdir -p "$out"
card="$(nvidia-smi --query-gpu=name --format=csv,noheader | head -n 1 | tr -c 'A-Za-z0-9\n' '_' | tr 'A-Z' 'a-z')"
bench=(python3 benchmarks/bench_interpolate.py --device cuda --runs 2)
export PYTHONUNBUFFERED=1

run() {  # name, then bench_interpolate arguments
    local name="$1"
    shift
    echo "=== $name"
    "${bench[@]}" "$@" --json "$out/${card}_${name}.json" 2>&1 | grep -E "summary|dtype|^ *(fp16|bf16|fp32) |failed|Error" || true
}

run steps50 --dtypes fp16,bf16 --steps 50
run steps25 --dtypes fp16,bf16 --steps 25
run fp8_e4m3fn --dtypes bf16 --weight-dtype fp8_e4m3fn --steps 50
run channels_last --dtypes fp16,bf16 --steps 50 --channels-last
if [ "${1:-}" != "eager" ]; then
    run compile --dtypes fp16 --steps 50 --compile --compile-mode max-autotune-no-cudagraphs
    run compile_cudagraphs --dtypes fp16 --steps 50 --compile --compile-mode reduce-overhead
fi
if [ -n "${COMFY:-}" ]; then
    python3 benchmarks/bench_comfy_nodes.py --comfy "$COMFY" --json "$out/${card}_comfy_normal.json"
    python3 benchmarks/bench_comfy_nodes.py --comfy "$COMFY" --budget-gib 6 --lowvram --json "$out/${card}_comfy_6gib_lowvram.json"
fi
ls -l "$out"
