#!/usr/bin/env bash
# The GPU evidence in one command (make gpu-check; under 10 minutes on one H100-class GPU):
# 1. one batch of the paper's beam search at 256 and 512 prompts: live vs reserved GPU memory;
# 2. two generations of pipelines/gpu-check.yaml (the paper pipeline at OPT-125m size: pretraining,
#    bf16 fine-tuning, 5-way beam search, every metric), with the GPU's memory sampled every 0.5 s;
# 3. the training and generation benchmarks in their GPU mode (opt-125m shape, bf16, MFU).
# Each step has its own time limit, so one that hangs still leaves the others their turn.
#   PYTHON=python3 RUN=runs/gpu-check bash bench/gpu_check.sh
set -uo pipefail
PYTHON=${PYTHON:-python3}
RUN=${RUN:-runs/gpu-check}
PIPELINE_LIMIT=${PIPELINE_LIMIT:-300}
BENCH_LIMIT=${BENCH_LIMIT:-290}
"$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'make gpu-check needs a CUDA GPU; on CPU run: make run')" || exit 1
mkdir -p "$(dirname "$RUN")"
nvidia-smi --query-gpu=timestamp,memory.used,utilization.gpu --format=csv,noheader -lms 500 > "$RUN.gpu-memory.csv" &
SAMPLER=$!
trap 'kill $SAMPLER 2>/dev/null' EXIT
status=0
timeout 150 "$PYTHON" -m bench.gpu_memory || status=$?
started=$(date +%s)
timeout "$PIPELINE_LIMIT" "$PYTHON" -m lmcollapse run --pipeline pipelines/gpu-check.yaml --run "$RUN" || status=$?
echo "=== pipeline: $(( $(date +%s) - started )) s, exit $status; GPU memory peak $(cut -d, -f2 "$RUN.gpu-memory.csv" | sort -n | tail -1) (nvidia-smi: the allocator's cache included)"
"$PYTHON" - "$RUN" <<'PY'
import json, sys
from pathlib import Path
for manifest in sorted(Path(sys.argv[1]).glob("generation-*/manifest.json")):
    timings = json.loads(manifest.read_text())["timings"]
    print(manifest.parent.name, ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))
PY
kill $SAMPLER 2>/dev/null
[ "${BENCHES:-}" = none ] || timeout "$BENCH_LIMIT" "$PYTHON" -m bench.run_all ${BENCHES:-train generate} || status=$?
exit $status
