#!/usr/bin/env bash
# FedCoT's GPU figures (issue #4), in the order that matters if time runs out:
#   1. CQA, all 9,741 training questions, 1,221 test questions: Standalone vs the multi-task student
#      trained on PaLM's recorded rationales (distilling step-by-step), seed 0;
#   2. the default `fedlsm run fedcot` (arith), for its wall time and table on a GPU;
#   3. the CQA comparison again with seed 1.
# Each step has its own time limit, so a slow or failing step leaves the others' results.
# Measured on one H200 (README): step 2 took 86 s; a Standalone half of step 1 about 3 min.
#
#   FEDLSM_DATA=../shared/data bash benchmarks/scripts/gpu_fedcot.sh OUT_DIR [SECONDS_AVAILABLE]
# (CQA_N_TRAIN, CQA_N_TEST, FEDCOT_ARGS, CQA_LIMIT, FEDCOT_LIMIT shrink it for a smoke run on a CPU.)
set -uo pipefail
cd "$(dirname "$0")/../.."
out=${1:?usage: gpu_fedcot.sh OUT_DIR [SECONDS_AVAILABLE]}
budget=${2:-1800}
mkdir -p "$out"
runs=${FEDLSM_RUNS:-runs/gpu}
py=${PYTHON:-python3}
start=$SECONDS
left() { echo $((budget - (SECONDS - start))); }

step() {  # step NAME SECONDS command...: run with a time limit, log its wall time and exit status
  local name=$1 limit=$2; shift 2
  [ "$limit" -gt "$(left)" ] && limit=$(left)
  if [ "$limit" -lt 30 ]; then echo "== $name: skipped (${limit}s left)"; return; fi
  echo "== $name (limit ${limit}s): $*"
  local t0=$SECONDS
  timeout "$limit" "$@"
  echo "== $name: exit $? after $((SECONDS - t0))s"
}

"$py" - <<'EOF'
import torch, transformers, peft
print("torch", torch.__version__, "transformers", transformers.__version__, "peft", peft.__version__,
      "cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
EOF

cqa() {  # cqa SEED LIMIT
  step "cqa seed $1" "$2" "$py" benchmarks/scripts/bench_recorded_teacher.py --seeds "$1" --n-train "${CQA_N_TRAIN:-9741}" --n-test "${CQA_N_TEST:-1221}" \
    --batch-size 32 --eval-batch-size 64 --output-dir "$runs"
  cp "$runs/recorded-teacher-cqa-seed$1.json" "$out/" 2>/dev/null
}

cqa 0 "${CQA_LIMIT:-900}"
step "fedcot default" "${FEDCOT_LIMIT:-600}" "$py" -m fedlsm run fedcot --name gpu-fedcot-default --set output_dir="$runs" ${FEDCOT_ARGS:-}
cp "$runs/gpu-fedcot-default/metrics.json" "$out/fedcot-default-metrics.json" 2>/dev/null
cqa 1 "${CQA_LIMIT:-900}"
echo "== total $((SECONDS - start))s"
