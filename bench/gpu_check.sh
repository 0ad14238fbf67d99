#!/usr/bin/env bash
# GPU check of the trainer, for a machine with one NVIDIA GPU and no network.
#
#   bench/gpu_check.sh WHEELS_DIR
#
# WHEELS_DIR holds the CUDA pair and what the trainer imports, e.g. made on a
# connected machine with:
#   pip download -d WHEELS_DIR torch==2.13.0 fbgemm-gpu==1.8.0 tensordict==0.15.3 \
#     torchmetrics==1.0.3 pyre-extensions tqdm pandas pyarrow pydantic-settings
#   pip download --no-deps -d WHEELS_DIR torchrec==1.8.0 recbole==1.2.1
# It installs them into a fresh venv, trains on the GPU (NCCL, fbgemm-gpu fused
# kernels, bf16 autocast) and prints samples/s and NDCG@10 on MovieLens-100K.
set -euo pipefail
wheels=${1:?usage: bench/gpu_check.sh WHEELS_DIR}
cd "$(dirname "$0")/.."
venv=${GPU_CHECK_VENV:-/tmp/gpu-check-venv}
python3 -m venv "$venv"
pip="$venv/bin/python -m pip install -q --no-index --find-links $wheels"
$pip torch==2.13.0 fbgemm-gpu==1.8.0 tensordict torchmetrics==1.0.3 pyre-extensions tqdm pandas pyarrow pydantic-settings
$pip --no-deps torchrec==1.8.0
"$venv/bin/python" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device visible'; print(torch.cuda.get_device_name(0))"
PYTHONPATH=. timeout 300 "$venv/bin/python" bench/gpu_train.py --data "$(ls "$wheels"/recbole-1.2.1-*.whl)"
