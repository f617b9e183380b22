#!/usr/bin/env bash
# The checks that need a GPU machine, in one run of at most 9.5 minutes (a device call may last 10); installs
# nothing and reads no network.
#
#   benchmarks/gpu_check.sh OUTDIR        (PYTHON=... to use another interpreter than .venv/bin/python)
#
# Writes into OUTDIR: env.json (GPU, versions), gpu-tests.json (+ .xml, .out, .log: the tests marked gpu and the LoRA
# logits test), bench-train-124m.json and bench-train-355m.json (benchmarks/bench_train.py, GPT-2 shapes, context 1024),
# bench-prepare.json (benchmarks/bench_prepare.py on every core), and summary.json (each step's exit code and seconds;
# 124 means its timeout cut it). Every step has its own timeout inside the 9.5 minutes and a failed step does not stop the
# others. GPTOPS_GPU_CHECK_TINY=1 runs the same steps with tiny shapes and 3x the time limits, to try the script on a CPU.
set -uo pipefail

if [ $# -ne 1 ]; then
  echo "usage: $0 OUTDIR" >&2
  exit 2
fi
OUT=$(mkdir -p "$1" && cd "$1" && pwd)
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
PYTHON=${PYTHON:-.venv/bin/python}
TOTAL_SECONDS=560  # 9.5 minutes, less the kill grace and the report conversion (an H200 run needed that much)
STARTED=$SECONDS

# The code of this tree, whatever the venv's editable install points at; nothing from a hub or an index.
export PYTHONPATH="$ROOT/operator${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PIP_NO_INDEX=1 GPTOPS_SKIP_CLUSTER=1
export TOKENIZERS_PARALLELISM=true

# SCALE stretches every time limit: the tiny run on a CPU checks the steps work end to end, not the GPU's timing.
if [ "${GPTOPS_GPU_CHECK_TINY:-0}" = 1 ]; then
  SHAPES=(tiny tiny) NAMES=(124m 355m) TRAIN_ARGS=(--steps 6 --docs 800 --batch 2) PREPARE_ARGS=(--docs 2000 --repeats 1)
  SCALE=3
else
  SHAPES=(124m 355m) NAMES=(124m 355m) TRAIN_ARGS=(--steps 15 --docs 10000) PREPARE_ARGS=(--docs 20000 --repeats 3)
  SCALE=1
fi
TOTAL_SECONDS=$((TOTAL_SECONDS * SCALE))

STEPS_JSON=""
# step NAME BUDGET_SECONDS OUTFILE COMMAND...: runs COMMAND with stdout to OUTFILE (stderr to NAME.log), under the
# smaller of its budget and the time left of the 9.5 minutes.
step() {
  local name=$1 budget=$2 outfile=$3
  shift 3
  local left=$((TOTAL_SECONDS - (SECONDS - STARTED)))
  budget=$((budget * SCALE))
  local limit=$((budget < left ? budget : left))
  local began=$SECONDS rc
  if [ "$limit" -lt 5 ]; then
    rc=-1
    echo "skipped $name: the 9.5 minutes are spent" >&2
  else
    echo "== $name (timeout ${limit}s)" >&2
    timeout --kill-after=10 "$limit" "$@" >"$outfile" 2>"$OUT/$name.log"
    rc=$?
  fi
  STEPS_JSON+="${STEPS_JSON:+,}\"$name\": {\"exitCode\": $rc, \"seconds\": $((SECONDS - began)), \"timeout\": $limit}"
  echo "   $name: exit $rc in $((SECONDS - began))s" >&2
}

step env 30 "$OUT/env.json" "$PYTHON" -c '
import json, os, platform, torch, transformers
cuda = torch.cuda.is_available()
print(json.dumps({"device": torch.cuda.get_device_name() if cuda else "cpu", "cuda": torch.version.cuda,
                  "bf16": cuda and torch.cuda.is_bf16_supported(), "torch": torch.__version__,
                  "transformers": transformers.__version__, "python": platform.python_version(),
                  "cpus": os.cpu_count()}, indent=2))'

step gpu-tests 170 "$OUT/gpu-tests.out" "$PYTHON" -m pytest -q -p no:cacheprovider \
  --junitxml="$OUT/gpu-tests.xml" tests/pipeline/test_pipeline_gpu.py \
  "tests/pipeline/test_pipeline_resume_lora.py::test_lora_adapter_reloads_with_peft_and_gives_the_same_logits"
"$PYTHON" - "$OUT/gpu-tests.xml" >"$OUT/gpu-tests.json" <<'EOF'
import json, sys
import xml.etree.ElementTree as ET
try:
    root = ET.parse(sys.argv[1]).getroot()
except (OSError, ET.ParseError) as e:
    print(json.dumps({"error": f"no test report: {e}"}))
    sys.exit()
cases = []
for case in root.iter("testcase"):
    outcome = next((child.tag for child in case if child.tag in ("failure", "error", "skipped")), "passed")
    detail = next((child.get("message", "") for child in case if child.tag in ("failure", "error", "skipped")), "")
    cases.append({"test": case.get("name"), "outcome": outcome, "seconds": float(case.get("time", 0)),
                  **({"message": detail[:500]} if detail else {})})
counts = {k: sum(c["outcome"] == k for c in cases) for k in ("passed", "failure", "error", "skipped")}
print(json.dumps({"counts": counts, "tests": cases}, indent=2))
EOF

for i in 0 1; do
  step "bench-train-${NAMES[$i]}" 175 "$OUT/bench-train-${NAMES[$i]}.json" \
    "$PYTHON" benchmarks/bench_train.py --shape "${SHAPES[$i]}" "${TRAIN_ARGS[@]}"
done

step bench-prepare 45 "$OUT/bench-prepare.json" \
  "$PYTHON" benchmarks/bench_prepare.py --num-proc "$(nproc)" "${PREPARE_ARGS[@]}"

echo "{\"seconds\": $((SECONDS - STARTED)), \"tiny\": ${GPTOPS_GPU_CHECK_TINY:-0}, \"steps\": {$STEPS_JSON}}" \
  >"$OUT/summary.json"
cat "$OUT/summary.json"
! grep -q '"exitCode": [^0]' "$OUT/summary.json"
