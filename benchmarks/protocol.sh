#!/usr/bin/env bash
# The protocol for one cell (dataset x encoder): tune every listed method with the same Optuna
# budget on validation (tuning seed 100, test never computed), then train each tuned recipe on the fresh
# seeds 0,1,2 and build one report (mean ± std, 95% intervals, paired bootstrap against BP).
#
#   benchmarks/protocol.sh CELL [OUT_ROOT]      CELL: debian_transformer | debian_lstm | agnews_transformer | agnews_lstm
#
# Environment: SHARED (default ../shared), METHODS (default bp,scpl), TRIALS (default 4), EPOCHS (default 5),
# EXTRA (more key=value overrides for every run of the cell, e.g. a smaller data.max_train_samples).
# Results: OUT_ROOT/CELL/{tune,report}/ — report/report.json is what docs/benchmarks.md quotes.
# Resumable: rerun the same command after a kill (tune resumes its SQLite study, compare keeps finished runs).
set -euo pipefail
cell=${1:?usage: benchmarks/protocol.sh CELL [OUT_ROOT]}
root=${2:-runs/protocol}
repo=$(cd "$(dirname "$0")/.." && pwd)
shared=$(cd "${SHARED:-$repo/../shared}" && pwd)
methods=${METHODS:-bp,scpl}
trials=${TRIALS:-4}
epochs=${EPOCHS:-5}
read -r -a extra <<< "${EXTRA:-}"
export HF_HUB_CACHE=${HF_HUB_CACHE:-$shared/hf-cache} HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

# The same small-CPU model for both datasets: d = 64, 3 blocks + embedding = 4 groups, batch 128.
common=(train.epochs=$epochs train.batch_size=128 model.hidden_size=64 method.projection=mlp_bn train.progress=false)
case $cell in
  debian_*) data=(data.name=custom data.path=$shared/datasets/debian_packages data.max_train_samples=8000
                  data.max_length=64 tokenizer.name=sentence-transformers/all-MiniLM-L6-v2)
            tune_eval=(data.max_eval_samples=2000) ;;  # tuning reads 2,000 of the 5,996 validation texts
  agnews_*) data=(data.path=$shared/datasets/ag_news_7600)
            tune_eval=() ;;
  *) echo "unknown cell $cell: debian_transformer | debian_lstm | agnews_transformer | agnews_lstm" >&2; exit 2 ;;
esac
# both cells start from the AG News recipes (the model and method settings); the data keys above replace theirs
case $cell in
  *_transformer) recipe=$repo/recipes/agnews_transformer.yaml
                 model=(model.num_heads=4 model.ffn_size=128 model.norm=pre) ;;
  *_lstm)        recipe=$repo/recipes/agnews_lstm.yaml
                 model=(model.lstm_pooling=mean) ;;
esac

out=$root/$cell
mkdir -p "$out"
# Same space and trial budget for every method: the learning rate for all, SCPL's temperature as well.
# (the other methods keep their default spaces in nlp_decouple/tuning/space.py, less the keys fixed above)
spaces=(space.train.lr=log:1e-3:1e-2 space.model.dropout=off)
[[ ,$methods, == *,scpl,* ]] && spaces+=(space.scpl.method.temperature=log:0.05:0.3)
python -m nlp_decouple.tune "$recipe" methods=$methods trials=$trials seeds=100 "${spaces[@]}" \
  "${common[@]}" "${data[@]}" "${tune_eval[@]}" "${model[@]}" ${extra[@]+"${extra[@]}"} --out "$out/tune"

runs=()
for m in ${methods//,/ }; do
  # the full validation split chooses the epoch in the reported runs
  python -m nlp_decouple compare "$out/tune/$m.yaml" methods=$m seeds=0,1,2 data.max_eval_samples=null \
    --out "$out/seeds/$m" >/dev/null
  runs+=("$out/seeds/$m"/$m-seed*)
done
python -m nlp_decouple report "${runs[@]}" --out "$out/report" --title "Protocol: $cell (tuned on validation, seeds 0-2)"
