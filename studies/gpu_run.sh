#!/usr/bin/env bash
# The one prepared command for a lent H200 (issue 18 item 7, issue 19): the CIFAR-10 study at ResNet-18 scale, then
# the GPU speed rows, everything into $OUT (9 files). Prepare here, once (no device time):
#   bash studies/gpu_wheels.sh                               # .whl/: what the device image lacks
#   python studies/cifar10_gpu.py --pack studies/.gpu_data      # the data that travels (under 60 MiB)
# then, with the device tool: command "bash studies/gpu_run.sh", carry [".whl", "studies/.gpu_data"], timeout_s 560.
# BUDGET_S (default 280) is the training time of the four runs together; calibration, evaluation and the speed rows
# take about 4 more minutes (an estimate: this script has not run on a GPU yet).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
: "${OUT:?run on the device machine, where \$OUT is set}"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH="$PWD:/tmp/site"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/log.txt"
python3 studies/cifar10_gpu.py --data studies/.gpu_data --out "$OUT" --work /tmp/gpu-work --budget-s "${BUDGET_S:-280}" \
    2>&1 | tee -a "$OUT/log.txt"
python3 bench/qscore_speed.py --device cuda --rows 50000 --dim 2048 --model-overhead --out "$OUT/qscore_speed.json" \
    2>&1 | tee -a "$OUT/log.txt"
python3 bench/score_throughput.py --device cuda --backbone resnet18_cifar --image-size 32 --batch-size 512 \
    --out "$OUT/score_throughput.json" 2>&1 | tee -a "$OUT/log.txt"
train_step() {  # bench/train_step.py on the packed CIFAR-10, one round (device time is short), plus the given flags
    QSCORE_CIFAR10_DIR=studies/.gpu_data python3 bench/train_step.py --device cuda --dataset cifar10 --max-samples 20000 \
        --backbone resnet18_cifar --batch-size 256 --steps 20 --num-workers 14 --rounds 1 "$@" 2>&1 | tee -a "$OUT/log.txt"
}
train_step --methods simclr,byol --loop-method simclr --out "$OUT/train_step.json"
train_step --methods none --loop-method byol --pipelines tensor --out "$OUT/train_step_byol.json"  # the default pipeline
