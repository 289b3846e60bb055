#!/usr/bin/env bash
# One sitting on a lent GPU machine (no internet there): the CUDA tests, the issue-7 units against the per-class
# reference, the fused multi-seed evaluation, then paper-profile cells in whatever time is left (bench/paper_cells.py
# cuts only their iteration counts, before each run, from measured costs). Every part has its own timeout, and
# one failing part does not stop the rest.
#
#   DATA=<root with fashion_mnist/raw/*.gz> BUDGET_S=480 OUT=<folder> bash bench/gpu_session.sh
# Results: $OUT/{session.log, pytest-cuda.log, results-units-cuda.json, results-fusion-cuda.json,
# results-paper-cells-cuda.json}. The python there is the machine's own (torch preinstalled), not .venv.
set -u
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1 MPLBACKEND=Agg
OUT=${OUT:-/tmp/gpu-session}
DATA=${DATA:-data}
BUDGET_S=${BUDGET_S:-480}
PY=${PY:-python3}
mkdir -p "$OUT"
start=$(date +%s)
left() { echo $(( BUDGET_S - ($(date +%s) - start) )); }
part() { echo "== $* (t=$(( $(date +%s) - start )) s)"; }

part environment
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1
$PY -c "import torch, sys; print(sys.version.split()[0], torch.__version__, torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else '')"
$PY -c "from ddlib import data; print(data.prepare('fashion_mnist', root='$DATA'))" || exit 1

part "CUDA tests"
timeout 240 $PY -m pytest -q -rfE -k cuda tests/test_methods.py > "$OUT/pytest-cuda.log" 2>&1
echo "pytest exit $?"; tail -25 "$OUT/pytest-cuda.log"

part "issue-7 units, fast vs per-class reference"
timeout 150 $PY bench/bench_units.py --repeats 3 --data-root "$DATA" && cp bench/results-units-cuda.json "$OUT/"

part "fused multi-seed evaluation"
timeout 90 $PY bench/bench_fusion.py --device cuda --repeats 5 && cp bench/results-fusion-cuda.json "$OUT/"

part "paper cells"
budget=$(( $(left) - 20 ))
if [ "$budget" -gt 30 ]; then
  timeout $(( budget + 60 )) $PY bench/paper_cells.py --budget-s "$budget" --data-root "$DATA" \
    --out "$OUT/results-paper-cells-cuda.json"
else
  echo "no time left for paper cells ($budget s)"
fi
part done
