#!/usr/bin/env bash
# The bundle benchmarks/minilm_gpu.sh takes to a CUDA machine without network (at most 64 MiB):
#   bash benchmarks/minilm_bundle.sh [SHARED] [BUNDLE]     (defaults ../shared and .gpu, in .gitignore)
# wheels for what that machine lacks (datasets and its pure-Python needs, for its Python 3.12), the shared
# ag_news_7600 and debian_packages, and the MiniLM Hub cache with the weights stored in fp16 (45 MB instead
# of 87 MB; minilm_gpu.sh widens them back to fp32).
set -euo pipefail
shared=$(cd "${1:-../shared}" && pwd)
bundle=${2:-.gpu}
mkdir -p "$bundle/whl" "$bundle/datasets"
python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d "$bundle/whl" \
  datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 fsspec==2026.9.0
cp -rL "$shared/datasets/ag_news_7600" "$shared/datasets/debian_packages" "$bundle/datasets/"
rm -rf "$bundle/hf-cache" && cp -rL "$shared/hf-cache" "$bundle/hf-cache" && chmod -R u+w "$bundle/hf-cache"
python - "$bundle" <<'PY'
import glob, sys
from safetensors.torch import load_file, save_file
for path in glob.glob(f"{sys.argv[1]}/hf-cache/models--*/snapshots/*/model.safetensors"):
    weights = load_file(path)
    save_file({k: v.half() if v.is_floating_point() else v for k, v in weights.items()}, path, metadata={"format": "pt"})
PY
du -sh "$bundle"
