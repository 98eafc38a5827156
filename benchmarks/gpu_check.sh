#!/usr/bin/env bash
# The GPU check in one command: prints a table, exits non-zero when a check failed (see gpu_check.py).
#   bash benchmarks/gpu_check.sh [--quick]
# Without CUDA every check is skipped and the exit status is 0.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" HF_DATASETS_OFFLINE="${HF_DATASETS_OFFLINE:-1}" TOKENIZERS_PARALLELISM=false
# the MiniLM rows load sentence-transformers/all-MiniLM-L6-v2 from the shared Hub cache unless one is set
export HF_HUB_CACHE="${HF_HUB_CACHE:-$(cd "${NLP_DECOUPLE_SHARED:-../shared}" 2>/dev/null && pwd)/hf-cache}"
exec python benchmarks/gpu_check.py "$@"
