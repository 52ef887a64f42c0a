#!/usr/bin/env bash
# The device check, as one prepared script: GPU tests, then the GPU benchmarks.
# On a lent GPU machine, from the repo root:  bash benchmarks/gpu.sh > $OUT/gpu.log 2>&1
set -euo pipefail
export USERNAME=${USERNAME:-bench} PYTHONUNBUFFERED=1
python -c "import torch; assert torch.cuda.is_available(); print(torch.cuda.get_device_name())"
python -m pytest -q -m gpu tests/test_gpu.py
python benchmarks/overhead.py --trials 8
python benchmarks/throughput.py --trials 8 --epochs 10
