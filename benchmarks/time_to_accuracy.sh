#!/usr/bin/env bash
# Time to accuracy on 2 CPU cores: BP in one process on 2 threads against SCPL pipelined over 2 processes of
# 1 thread each (train.pipeline=processes, two groups per rank), the same recipe, overrides and seeds, a fixed
# epoch budget (no early stop: BP's best is its best within the budget). Then time_to_accuracy.py gives each
# seed's training time until validation accuracy first reaches 99% of BP's best and the ratio of the means.
#
#   benchmarks/time_to_accuracy.sh OUT SEEDS EPOCHS RECIPE [key=value ...]
#   RECIPE: one recipe for both methods, or a folder of tuned recipes (bp.yaml and scpl.yaml, as `nlp-decouple
#   tune` writes them, e.g. the protocol's OUT_ROOT/CELL/tune): each method then trains with its own settings.
#   benchmarks/time_to_accuracy.sh runs/tta_agnews 20,21,22 20 recipes/agnews_transformer.yaml \
#       data.path=../shared/datasets/ag_news_7600 data.max_length=60 model.hidden_size=64 model.num_heads=4 model.ffn_size=128
#
# Run it on an otherwise idle machine: the times are the measurement. A finished run is kept (rerun to resume).
set -euo pipefail
out=${1:?usage: OUT SEEDS EPOCHS RECIPE [key=value ...]}; seeds=${2:?}; epochs=${3:?}; recipe=${4:?}; shift 4
common=("$@" train.epochs="$epochs" train.early_stopping_patience=null eval.every_group=false train.progress=false
        output_dir="$out")
bp_recipe=$recipe scpl_recipe=$recipe
if [[ -d $recipe ]]; then bp_recipe=$recipe/bp.yaml scpl_recipe=$recipe/scpl.yaml; fi
for r in "$bp_recipe" "$scpl_recipe"; do
  [[ -f $r ]] || { echo "error: no recipe $r: give a recipe file or a folder with bp.yaml and scpl.yaml" >&2; exit 2; }
done
for s in ${seeds//,/ }; do
  [[ -f $out/bp-seed$s/results.json ]] || OMP_NUM_THREADS=2 python -m nlp_decouple.train "$bp_recipe" "${common[@]}" \
    method.name=bp train.seed="$s" run_name=bp-seed"$s"
  [[ -f $out/scpl-seed$s/results.json ]] || OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node 2 \
    -m nlp_decouple.train "$scpl_recipe" "${common[@]}" method.name=scpl train.seed="$s" train.pipeline=processes \
    train.cpu=true 'train.stages_per_rank=[2,2]' run_name=scpl-seed"$s"
done
python "$(dirname "$0")/time_to_accuracy.py" "$out"/bp-seed* "$out"/scpl-seed* --targets 0.8 --of-best bp 0.99 \
  --out "$out/time_to_accuracy.json" --png "$out/time_to_accuracy.png"
