#!/usr/bin/env bash
# The benchmark work still open (issues 21 and 22), most wanted first (issue 22's ablation
# shares one set and one teacher, so its rows are the cheapest per row), for a lent GPU's
# 15 minutes: each line is one bench/accuracy.py call under one shared deadline, so running
# out of time loses only the cell in progress. The committed rows are copied in first (so done
# cells are skipped); only the rows this run adds come back, as $OUT/new_rows.jsonl (append
# them to bench/results/accuracy.jsonl) and $OUT/new_strongest.jsonl (append them to
# bench/results/strongest.jsonl), then run bench/report.py. Every row records its
# machine. The data copy holds one imbalance factor's exact split (`lt_subset_tar.py`: IF 100
# 34 MB, IF 10 45 MB, IF 200 32 MB; one of them fits the 64 MiB the working tree may carry), and
# IMBALANCE (default 100) names it: the cells and rows at that factor run, and a copy loaded at
# another factor is refused by the loader, never silently re-split:
#
#   python3 ../shared/tools/lt_subset_tar.py ../shared/datasets/cifar10 .gpu/cifar10 [10]
#   echo /.gpu/ >> .git/info/exclude
#   device run (carry .gpu):  BUDGET_S=480 [IMBALANCE=10] bash bench/gpu_cells.sh
#
# CPU check of the script itself: CELLS=smoke BUDGET_S=300 OUT=/tmp/o bash bench/gpu_cells.sh
set -u
DATA=${DATA:-.gpu/cifar10}
IMB=${IMBALANCE:-100}
OUT=${OUT:-/tmp/gpu-cells-out}
W=${WORK:-/tmp/gpu-cells}
PY=${PYTHON:-python3}
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH}
mkdir -p "$OUT" "$W"
cp bench/results/accuracy.jsonl "$W/accuracy.jsonl"
n0=$(wc -l < "$W/accuracy.jsonl")
touch "$W/strongest.jsonl"; [ -f bench/results/strongest.jsonl ] && cp bench/results/strongest.jsonl "$W/strongest.jsonl"
s0=$(wc -l < "$W/strongest.jsonl")
deadline=$((SECONDS + ${BUDGET_S:-480}))

cell() {  # one accuracy.py call, stopped at the deadline
  local left=$((deadline - SECONDS))
  if [ "$left" -le 20 ]; then echo "skipped (no time left): $*" | tee -a "$OUT/cells.log"; return 0; fi
  echo "== $* (${left}s left)" | tee -a "$OUT/cells.log"
  timeout "$left" "$PY" bench/accuracy.py --data-root "$DATA" --out-dir "$W" "$@" 2>&1 | tail -n 40 >> "$OUT/cells.log"
}

strongest() {  # issue 22: bench/strongest.py STAGE (search, or test at the copy's IF), row by row, stopped at the deadline
  local left=$((deadline - SECONDS)) stage=$1
  if [ "$left" -le 20 ]; then echo "skipped (no time left): strongest $stage" | tee -a "$OUT/cells.log"; return 0; fi
  echo "== strongest $stage (${left}s left)" | tee -a "$OUT/cells.log"
  timeout "$left" "$PY" bench/strongest.py --protocol "${STRONGEST_PROTOCOL:-strongest-v1}" "$stage" \
    $([ "$stage" = test ] && echo --imbalance "$IMB") --data-root "$DATA" --out "$W/strongest.jsonl" 2>&1 \
    | tail -n 40 >> "$OUT/cells.log"
}

if [ "${CELLS:-open}" = smoke ]; then
  cell --grid smoke --protocol smoke
  STRONGEST_PROTOCOL=smoke strongest search
  STRONGEST_PROTOCOL=smoke strongest test
else
  strongest test                                              # issue 22: its test rows at this IF not yet run (IF 100: the ablation)
  cell --grid protocols --imbalance "$IMB" --variant converged # issue 21: whole-LT reference, 200 epochs per profile
fi
tail -n +$((n0 + 1)) "$W/accuracy.jsonl" > "$OUT/new_rows.jsonl"
tail -n +$((s0 + 1)) "$W/strongest.jsonl" > "$OUT/new_strongest.jsonl"
echo "$(wc -l < "$OUT/new_rows.jsonl") new rows in $OUT/new_rows.jsonl, $(wc -l < "$OUT/new_strongest.jsonl") in $OUT/new_strongest.jsonl" | tee -a "$OUT/cells.log"
