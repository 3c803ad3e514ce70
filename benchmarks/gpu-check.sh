#!/usr/bin/env bash
# The GPU checks of the test suite, run on a lent GPU machine that has PyTorch and Lightning
# but neither Ray nor MLflow: those travel as wheels in .whl/, made by benchmarks/gpu_wheels.py.
set -euo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
python3 -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/site .
export PYTHONPATH=/tmp/site
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import torch, lightning, ray, mlflow; print('torch', torch.__version__, 'lightning', lightning.__version__, 'ray', ray.__version__, 'mlflow', mlflow.__version__, 'cuda', torch.cuda.is_available())"
python3 -m pytest -p no:cacheprovider -m gpu -v tests/test_training.py tests/test_ray.py 2>&1 | tee "${OUT:-/tmp}/gpu-check.log"
