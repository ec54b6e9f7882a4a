#!/usr/bin/env bash
# The GPU gates in one command: every gate of benchmarks/gates.py on the CUDA card, each step
# time-boxed, then ONE JSON summary and its Markdown table.
#
#   benchmarks/gpu_gate.sh [OUT_DIR]        # OUT_DIR: first argument, else $OUT, else build/gates
#
# Writes OUT_DIR/summary.json (date, machine, per gate: figures, baseline, ratio, goal, met),
# OUT_DIR/summary.md (the table), OUT_DIR/bench-<step>.json (pytest-benchmark's raw data) and
# OUT_DIR/<step>.log. A gate that fails or runs past its limit is recorded as FAILED in the
# summary and the next one runs; the exit status is 1 if any step failed.
# Installs nothing beyond the project: `pip install -e '.[dev]'` only when there is no .venv
# and python3 lacks the gates' imports.
# Budget: under 8 minutes on one H100/H200 (the limits below add up to 485 s + start-up);
# each can be changed with GATE_LIMIT_<STEP> (seconds).
set -euo pipefail

cd "$(dirname "$0")/.."
OUT_DIR="${1:-${OUT:-build/gates}}"
mkdir -p "$OUT_DIR"
SUMMARY="$OUT_DIR/summary.json"
rm -f "$SUMMARY" "$OUT_DIR/summary.md"

# The project's .venv; else a python3 that already has what the gates import (a prepared GPU
# image); else, and only then, the project installed into a new .venv.
NEEDS='import torch, transformers, fastapi, uvicorn, httpx, pytest_benchmark, pydantic_settings'
if [ -x .venv/bin/python ]; then
    PY=.venv/bin/python
elif python3 -c "$NEEDS" 2>/dev/null; then
    PY=python3
else
    python3 -m venv .venv
    .venv/bin/pip install -e '.[dev]'
    PY=.venv/bin/python
fi
export PYTHONUNBUFFERED=1 LLMFS_GATE_JSON="$SUMMARY"

echo "== nvidia-smi"
nvidia-smi || echo "(nvidia-smi failed)"
if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "no CUDA device visible to torch: the gates need one (the CPU twins are" \
         "tests/test_gate_twins.py)" >&2
    exit 2
fi
"$PY" -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda,
      torch.cuda.get_device_name())'

status=0

# run_step NAME LIMIT_S EXPECTED_GATES [--ok-entry] -- COMMAND...
run_step() {
    local name=$1 limit=$2 expect=$3
    shift 3
    local ok_entry=()
    if [ "$1" = "--ok-entry" ]; then ok_entry=(--ok-entry); shift; fi
    shift  # --
    local var="GATE_LIMIT_${name^^}"
    limit="${!var:-$limit}"
    echo "== $name (limit ${limit}s): $*"
    local rc=0
    timeout --kill-after=15 "$limit" "$@" >"$OUT_DIR/$name.log" 2>&1 || rc=$?
    tail -n 15 "$OUT_DIR/$name.log"
    echo "== $name: exit status $rc"
    if [ "$rc" -ne 0 ]; then status=1; fi
    "$PY" -m benchmarks.gate_report "$SUMMARY" --step "$name" --rc "$rc" --expect "$expect" \
        --log "$OUT_DIR/$name.log" "${ok_entry[@]}" >/dev/null || status=1
}

# the pytest cases of one step: "${GATES[@]}" STEP_OPTIONS
GATES=("$PY" -m pytest benchmarks/test_gpu_gates.py -p no:cacheprovider -q -s
       --gate-json "$SUMMARY")

run_step train 180 train -- "${GATES[@]}" --benchmark-json="$OUT_DIR/bench-train.json" \
    -k train_gate
run_step decode 170 decode,int8 -- "${GATES[@]}" --benchmark-json="$OUT_DIR/bench-decode.json" \
    -k "decode_gate or int8_gate"
run_step api 75 api -- "${GATES[@]}" --benchmark-json="$OUT_DIR/bench-api.json" -k api_gate

# FSDP smoke ---------------------------------------------------------------------------------
# FSDP2 (train.strategy=fsdp) under torchrun on the card: 20 steps of a 12-layer model in bf16,
# then a resume to 30 (the full checkpoint round trip). Recorded as gate "fsdp_smoke"; its
# failure never stops the rest.
run_step fsdp 60 fsdp_smoke --ok-entry -- bash -c '
    "$0" -m torch.distributed.run --standalone --nproc_per_node=1 -m reference train \
        train.strategy=fsdp train.device=cuda train.dtype=bfloat16 data.source=markov \
        data.markov_tokens=200000 model.n_layer=12 model.n_head=12 model.n_embd=768 \
        model.block_size=256 train.batch_size=8 train.max_steps=20 train.warmup_steps=2 \
        train.eval_interval=10 train.eval_steps=2 train.log_interval=5 train.progress=false \
        train.tensorboard=false train.plot=false "train.out_dir=$1/fsdp_smoke" --overwrite \
        --no-sample &&
    "$0" -m torch.distributed.run --standalone --nproc_per_node=1 -m reference resume \
        "$1/fsdp_smoke" train.max_steps=30 --no-sample' "$PY" "$OUT_DIR"
# --------------------------------------------------------------------------------------------

echo "== report"
"$PY" -m benchmarks.gate_report "$SUMMARY" || status=1
echo "summary: $SUMMARY, table: $OUT_DIR/summary.md"
exit "$status"
