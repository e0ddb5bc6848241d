#!/usr/bin/env bash
# Wheels the GPU machine's image lacks (datasets, lightly and what they need), for Python 3.12 on x86_64, into .whl/
# (git-ignored), which studies/gpu_run.sh installs there. The image's list of packages: ../.library/device/KINDS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" \
    -d .whl datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 lightly==1.6.0 hydra-core==1.3.8 omegaconf==2.3.1
# antlr4's runtime (hydra's) is published as a source archive only: build its pure-Python wheel here.
python3 -m pip wheel -q --no-deps -w .whl antlr4-python3-runtime==4.9.3
ls -la .whl
