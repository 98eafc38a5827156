#!/usr/bin/env bash
# The MiniLM recipes' learning rates chosen leave one dataset out, on a CUDA machine without network:
#   bash benchmarks/minilm_lodo.sh BUNDLE OUT        (BUNDLE: benchmarks/minilm_bundle.sh's, as for minilm_gpu.sh)
# BP and SCPL, validation only (test never computed), tuning seed 100, the recipe's 3 epochs, one key at a time
# around recipes/agnews_minilm.yaml: the body's train.lr and the new heads' train.head_lr, on the two
# development cells (debian_packages: 8,000 training / 2,000 validation texts; AG News: 5,472 / 608). Then the
# leave-one-dataset-out choice (sensitivity.py --choose) and the tables. JOBS runs share the GPU at once.
# Resumable (finished runs are kept). Dry run on a CPU: JOBS=2 QUICK='data.max_train_samples=64 train.max_steps=2
# data.max_eval_samples=32 eval.every_group=false'.
set -uo pipefail
read -r -a quick <<< "${QUICK:-}"
bundle=$(cd "${1:?usage: minilm_lodo.sh BUNDLE OUT}" && pwd)
out=${2:?usage: minilm_lodo.sh BUNDLE OUT}
mkdir -p "$out" && out=$(cd "$out" && pwd)
cd "$(dirname "$0")/.."
source benchmarks/bundle_env.sh "$bundle"  # the wheels, the Hub cache in fp32, the environment
export NLP_DECOUPLE_SHARED=$bundle  # its datasets/ag_news_7600 and datasets/debian_packages
sens=(python3 benchmarks/sensitivity.py --recipe recipes/agnews_minilm.yaml --methods bp,scpl --seeds 100
      --jobs "${JOBS:-8}" --threads 2 --out "$out" --fixed train.epochs=3 ${quick[@]+"${quick[@]}"})
for cell in debian agnews; do
  "${sens[@]}" --cell $cell --vary train.lr=2e-5,5e-5,1e-4,2e-4
  "${sens[@]}" --cell $cell --vary train.head_lr=3e-4,1e-3,3e-3
done
python3 benchmarks/sensitivity.py --collect --out "$out" | tee "$out/tables.txt"
python3 benchmarks/sensitivity.py --choose --methods bp,scpl --cells debian,agnews --out "$out" | tee "$out/choice.txt"
