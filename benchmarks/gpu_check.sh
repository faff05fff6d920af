#!/usr/bin/env bash
# The GPU measurements in one go (about 10 minutes on an H200): 16 frames 320x512, 50 and 25 steps,
# fp16 and bf16, fp8 weight storage, channels-last, torch.compile, and, with ComfyUI, the nodes
# normal and with a 6 GiB budget under --lowvram and the native MODEL with the stock KSampler at the
# fast setting of workflows/tooncrafter_ksampler.json (also with ComfyUI's EasyCache and TorchCompileModel),
# and one rank-16 LoRA training step (peak memory,
# s/step, with and without gradient checkpointing). Each run writes its JSON to $OUT (or
# benchmarks/results/) named after the card; check_targets.py then prints the targets met or missed and,
# for a miss, where the time or memory went (per-phase peaks, the profiled step's top operators).
#
#   COMFY=.comfyui bash benchmarks/gpu_check.sh           # everything (ComfyUI copied into the repo: the
#                                                         # device machine gets the repo and nothing beside it)
#   bash benchmarks/gpu_check.sh eager                    # without the compile runs
#   COMFY=../shared/comfyui bash benchmarks/gpu_check.sh dry-run   # every run on the CPU with the tiny fixture
set -uo pipefail
cd "$(dirname "$0")/.."

mode="${1:-all}"
export PYTHONUNBUFFERED=1
comfy="${COMFY:-}"
failures=0

if [ "$mode" = "dry-run" ]; then
    # Every command of the GPU run, on the CPU with the tiny fixture, into a scratch folder: a mistake
    # here would otherwise cost device time.
    out="${OUT:-$(mktemp -d)}"
    card="dryrun_cpu"
    tiny="${TINY:-../shared/reference/tiny-4f-64x64}"
    bench=(python3 benchmarks/bench_interpolate.py --device cpu --runs 1 --tiny "$tiny" --warmup-steps 1 --phase-steps 1)
    steps50=(--steps 3)
    steps25=(--steps 2)
    dtypes=(--dtypes fp32)
    ckpt_dir="$(mktemp -d)"
    cp "$tiny/model.safetensors" "$ckpt_dir/tiny.safetensors"
    cp "$tiny/config.yaml" "$ckpt_dir/tiny.yaml"
    cp "$tiny/TC-Tiny.json" "$ckpt_dir/"
    nodes=(--ckpt-dir "$ckpt_dir" --ckpt tiny.safetensors --width 64 --height 64 --steps 3)
    fast_steps=4
    cache_steps=6
    train=(python3 benchmarks/bench_train.py --device cpu --tiny --sizes 64x64 128x128 --frames 4)
else
    out="${OUT:-benchmarks/results}"
    card="$(nvidia-smi --query-gpu=name --format=csv,noheader | head -n 1 | tr -c 'A-Za-z0-9\n' '_' | tr 'A-Z' 'a-z')"
    bench=(python3 benchmarks/bench_interpolate.py --device cuda --runs 2)
    steps50=(--steps 50)
    steps25=(--steps 25)
    dtypes=(--dtypes fp16,bf16)
    nodes=()
    fast_steps=16
    cache_steps=25
    train=(python3 benchmarks/bench_train.py --device cuda --sizes 320x512 --frames 16)
fi
mkdir -p "$out"

run() {  # name, then bench_interpolate arguments
    local name="$1"
    shift
    echo "=== $name"
    if ! "${bench[@]}" "$@" --json "$out/${card}_${name}.json" > "$out/${card}_${name}.log" 2>&1; then
        failures=$((failures + 1))
        tail -n 20 "$out/${card}_${name}.log"
    fi
    grep -E "summary|failed|Error" "$out/${card}_${name}.log" || true
}

nodes_run() {  # name, then bench_comfy_nodes arguments
    local name="$1"
    shift
    echo "=== $name"
    if ! python3 benchmarks/bench_comfy_nodes.py --comfy "$comfy" "${nodes[@]}" "$@" --json "$out/${card}_${name}.json" \
            > "$out/${card}_${name}.log" 2>&1; then
        failures=$((failures + 1))
        tail -n 20 "$out/${card}_${name}.log"
    fi
}

run steps50 "${dtypes[@]}" "${steps50[@]}" --profile
run steps25 "${dtypes[@]}" "${steps25[@]}"
run fp8_e4m3fn --dtypes "$([ "$mode" = dry-run ] && echo fp32 || echo bf16)" --weight-dtype fp8_e4m3fn "${steps50[@]}"
run channels_last "${dtypes[@]}" "${steps50[@]}" --channels-last
if [ "$mode" = "all" ]; then
    run compile --dtypes fp16 --steps 50 --compile --compile-mode max-autotune-no-cudagraphs
    run compile_cudagraphs --dtypes fp16 --steps 50 --compile --compile-mode reduce-overhead
fi
echo "=== train_step"
if ! "${train[@]}" --json "$out/${card}_train_step.json" > "$out/${card}_train_step.log" 2>&1; then
    failures=$((failures + 1))
    tail -n 20 "$out/${card}_train_step.log"
fi
if [ -n "$comfy" ]; then
    nodes_run comfy_normal
    nodes_run comfy_6gib_lowvram --budget-gib 6 --lowvram
    nodes_run comfy_native_ipndm_beta_${fast_steps} --sampler ipndm --scheduler beta --steps "$fast_steps"
    nodes_run comfy_native_easycache --sampler ipndm --scheduler beta --steps "$cache_steps" --easycache 0.1
    if [ "$mode" != "eager" ]; then
        nodes_run comfy_native_torch_compile --sampler ipndm --scheduler beta --steps "$cache_steps" \
            --torch-compile "$([ "$mode" = dry-run ] && echo eager || echo inductor)"
    fi
fi
ls -l "$out"
echo "=== targets"
python3 benchmarks/check_targets.py --out "$out" --card "$card" || failures=$((failures + 1))
echo "failed runs: $failures"
exit $((failures > 0))
