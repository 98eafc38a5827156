# Sourced by the GPU scripts (minilm_gpu.sh, minilm_lodo.sh) from the project's root, with the bundle that
# benchmarks/minilm_bundle.sh made: installs its wheels under /tmp/site, copies its Hub cache to /tmp/hf-cache
# with the weights widened back to fp32, sets the offline environment, prints the machine's versions.
#   source benchmarks/bundle_env.sh BUNDLE
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$1"/whl/*.whl || exit 2
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export HF_HUB_CACHE=/tmp/hf-cache HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_DATASETS_CACHE=/tmp/hf-datasets
rm -rf /tmp/hf-cache && cp -r "$1/hf-cache" /tmp/hf-cache
python3 - <<'EOF' || exit 2
import glob
from safetensors.torch import load_file, save_file
for path in glob.glob("/tmp/hf-cache/models--*/snapshots/*/model.safetensors"):
    weights = load_file(path)
    save_file({k: v.float() if v.is_floating_point() else v for k, v in weights.items()}, path, metadata={"format": "pt"})
    print("fp32 weights:", path)
EOF
nvidia-smi -L 2>/dev/null; python3 -c "import torch, transformers, accelerate, datasets; print(torch.__version__, transformers.__version__, accelerate.__version__, datasets.__version__, torch.cuda.is_available() and torch.cuda.get_device_name(0))"
