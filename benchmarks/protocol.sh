#!/usr/bin/env bash
# The protocol for one cell (dataset x encoder): tune every listed method with the same Optuna budget on
# validation (tuning seed 100, test never computed), then train each tuned recipe on the fresh seeds 10-14
# (never used by any earlier measurement) and build one report (paired t test and TOST verdicts against BP).
#
#   benchmarks/protocol.sh CELL [OUT_ROOT]      CELL: debian_transformer | debian_lstm | agnews_transformer | agnews_lstm
#
# Rules: every setting is either searched for every method on validation or fixed for a reason that is not a
# score. Searched: three keys per method (nlp_decouple/tuning/space.py): train.lr log-uniform in
# [1e-4, 3e-2] and train.weight_decay for all, plus the method's own key (SCPL's temperature, DeInfoReg's
# ce_weight, AL's label_dim; dropout for BP and Early Exit). Fixed: the model size (set by the CPU budget)
# and everything else at the recipes' values: the Transformer recipes' pre-norm and mlp_bn projection were
# chosen on validation leaving one dataset out (docs/methods.md, 'Where the recipes' defaults come from'),
# the BiLSTM recipe's masked-mean pooling was chosen on validation the same way (identity projection), and
# SCPL's prototypes and (Transformer) its exit on every group were chosen on validation (docs/scpl_study.md). Every run trains to convergence: up to
# EPOCHS epochs, stopped after PATIENCE epochs without a validation gain.
#
# Environment: SHARED (default ../shared), METHODS (default bp,scpl,early_exit,deinforeg,al), TRIALS (default
# 8, per method), EPOCHS (the cap, default 30), PATIENCE (default 3), SEEDS (default 10,11,12,13,14),
# EXTRA (more key=value overrides for every run of the cell, e.g. a smaller data.max_train_samples),
# REUSE_OTHER_VERSIONS=1 (keep studies and runs made by other code or on other data; refused otherwise).
# Results: OUT_ROOT/CELL/{tune,seeds,report}/ — report/report.json is what docs/benchmarks.md quotes.
# Resumable: rerun the same command after a kill (tune resumes its SQLite study, compare keeps finished runs).
set -euo pipefail
cell=${1:?usage: benchmarks/protocol.sh CELL [OUT_ROOT]}
root=${2:-runs/protocol}
repo=$(cd "$(dirname "$0")/.." && pwd)
shared=$(cd "${SHARED:-$repo/../shared}" && pwd)
methods=${METHODS:-bp,scpl,early_exit,deinforeg,al}
trials=${TRIALS:-8}
epochs=${EPOCHS:-30}
patience=${PATIENCE:-3}
seeds=${SEEDS:-10,11,12,13,14}
reuse=()
[[ ${REUSE_OTHER_VERSIONS:-0} == 1 ]] && reuse=(--reuse-other-versions)
read -r -a extra <<< "${EXTRA:-}"
export HF_HUB_CACHE=${HF_HUB_CACHE:-$shared/hf-cache} HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

# The same small-CPU model for both datasets: d = 64, 3 blocks + embedding = 4 groups, batch 128.
common=(train.epochs=$epochs train.early_stopping_patience=$patience train.batch_size=128 model.hidden_size=64
        train.progress=false)
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
                 model=(model.num_heads=4 model.ffn_size=128) ;;
  *_lstm)        recipe=$repo/recipes/agnews_lstm.yaml
                 model=() ;;
esac

out=$root/$cell
mkdir -p "$out"
nlp-decouple tune "$recipe" methods=$methods trials=$trials seeds=100 "${common[@]}" "${data[@]}" \
  "${tune_eval[@]}" ${model[@]+"${model[@]}"} ${extra[@]+"${extra[@]}"} ${reuse[@]+"${reuse[@]}"} --out "$out/tune"

runs=()
for m in ${methods//,/ }; do
  # the full validation split chooses the epoch in the reported runs
  nlp-decouple compare "$out/tune/$m.yaml" methods=$m seeds=$seeds data.max_eval_samples=null \
    ${reuse[@]+"${reuse[@]}"} --out "$out/seeds/$m" >/dev/null
  for s in ${seeds//,/ }; do runs+=("$out/seeds/$m/$m-seed$s"); done
done
nlp-decouple report "${runs[@]}" --out "$out/report" \
  --title "Protocol: $cell (tuned on validation, seeds ${seeds//,/ })"
