#!/usr/bin/env bash
# The device check, as one prepared script: GPU tests, then the GPU benchmarks.
# On a GPU machine with the project installed, from the repo root:
#   PYTHON=.venv/bin/python bash benchmarks/gpu.sh > gpu.log 2>&1
set -euo pipefail
export USERNAME=${USERNAME:-bench} PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
"$py" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name())"
"$py" -m pytest -q -m gpu tests/test_gpu.py
"$py" benchmarks/overhead.py --trials 8
"$py" benchmarks/overhead.py --vs-baseline --pairs 3
"$py" benchmarks/throughput.py --trials 8 --epochs 10
