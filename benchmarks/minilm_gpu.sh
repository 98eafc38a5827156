#!/usr/bin/env bash
# The MiniLM GPU measurements in one command, on a CUDA machine without network (a budget of minutes):
#   bash benchmarks/minilm_gpu.sh BUNDLE OUT
# BUNDLE (made by benchmarks/minilm_bundle.sh where ../shared is) holds the wheels such a machine lacks
# (datasets and its pure-Python needs), the two shared datasets, and the MiniLM Hub cache with its weights
# stored in fp16 (the copy sent to that machine carries at most 64 MiB; the fp32 file is 87 MiB): they are widened back to fp32
# here (largest difference 1e-3, sentence vectors' cosine >= 0.999999 against the original).
# Steps: a smoke run (stops everything if it fails); pretrained_cost.py alone on the GPU (clean step times,
# peak memory whole and per stage); then minilm_table.py (the table, several runs at a time) with the
# memory-only cost variants beside it. Everything lands in OUT.
# Dry run on a CPU machine: DEVICE=cpu STEPS=1 QUICK='data.max_train_samples=64 train.max_steps=2 ...' (QUICK goes to
# every run of the table; the smoke run is small already, the cost runs take STEPS).
set -uo pipefail
device=${DEVICE:-cuda}
read -r -a quick <<< "${QUICK:-}"
bundle=$(cd "${1:?usage: minilm_gpu.sh BUNDLE OUT}" && pwd)
out=${2:?usage: minilm_gpu.sh BUNDLE OUT}
mkdir -p "$out" && out=$(cd "$out" && pwd)
cd "$(dirname "$0")/.."
t0=$SECONDS
source benchmarks/bundle_env.sh "$bundle"  # the wheels, the Hub cache in fp32, the environment
shared=$bundle  # datasets/ag_news_7600, datasets/debian_packages

echo "== smoke ($((SECONDS - t0))s)"
python3 -m nlp_decouple.train recipes/agnews_minilm.yaml data.path="$shared/datasets/ag_news_7600" method.name=scpl \
  train.max_steps=10 train.epochs=1 data.max_train_samples=640 data.max_eval_samples=256 train.progress=false \
  output_dir=/tmp/smoke run_name=scpl > "$out/smoke.log" 2>&1 || { tail -30 "$out/smoke.log"; exit 1; }
grep -E '"device"|"test_accuracy"|"peak_memory_mb"' /tmp/smoke/scpl/results.json

echo "== cost, alone on the GPU ($((SECONDS - t0))s)"
python3 benchmarks/pretrained_cost.py recipes/agnews_minilm.yaml --device $device --steps "${STEPS:-30}" \
  --out "$out/minilm_cost.json" 2>&1 | tail -6

elapsed=$((SECONDS - t0))  # the table's limits count from this script's start
echo "== table (${elapsed}s)"
# memory only beside the table (their step times overlap its runs): other cuts, a frozen embedding, longer texts
set -m  # job control: the background job gets its own process group, killed whole at the time limit
(
  python3 benchmarks/pretrained_cost.py recipes/agnews_minilm.yaml 'model.groups=[1,2,2,2]' --methods bp,scpl \
    --device "$device" --out "$out/minilm_cost_groups1222.json"
  python3 benchmarks/pretrained_cost.py recipes/agnews_minilm.yaml model.freeze_embeddings=true --methods bp,scpl \
    --device "$device" --out "$out/minilm_cost_frozen.json"
  python3 benchmarks/pretrained_cost.py recipes/agnews_minilm.yaml data.max_length=256 --methods bp,scpl \
    --device "$device" --out "$out/minilm_cost_len256.json"
) > "$out/cost_variants.log" 2>&1 &
cost_pid=$!
set +m
python3 benchmarks/minilm_table.py --shared "$shared" --work /tmp/minilm --archive "$out/minilm_runs.tar.gz" \
  --parallel "${PARALLEL:-6}" --seeds "${SEEDS:-0,1,2}" --stop-launching $(( ${STOP_AT:-440} - elapsed )) --kill-at $(( ${KILL_AT:-535} - elapsed )) ${quick[@]+"${quick[@]}"} 2>&1 | tee "$out/table.log"
while kill -0 $cost_pid 2>/dev/null && (( SECONDS - t0 < ${KILL_AT:-535} )); do sleep 1; done
kill -- -$cost_pid 2>/dev/null  # past the time limit: what finished is in OUT
wait
echo "== done ($((SECONDS - t0))s)"
