#!/usr/bin/env bash
# Prepare what the GPU machine lacks for benchmarks/gpu_suite.py (run here, where the package
# registries are reachable; `make gpu-prep`):
#   .whl/  Python 3.12 manylinux wheels of exactly the packages its image does not have, at the
#          versions of this checkout's .venv (so the GPU runs what the tests ran);
#   .gl/   the EGL/GLVND debs for headless MuJoCo rendering on NVIDIA's driver.
# Both are git-ignored and travel with the `carry` of the device call; together under 64 MiB.
# The image already has torch, timm, einops, numpy, safetensors, huggingface-hub, h5py, imageio,
# matplotlib, tqdm, msgpack, pyyaml, Pillow, requests, absl-py, etils, cloudpickle, packaging.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
# What the image lacks, and what those need that it lacks too (checked against its package list).
MISSING=(mujoco mujoco-core mujoco-studio glfw PyOpenGL gymnasium Farama-Notifications
         hydra-core omegaconf antlr4-python3-runtime zarr numcodecs donfig google-crc32c
         diffusers importlib_metadata scaling-on-scales pyzmq)
pins=()
for name in "${MISSING[@]}"; do
    version=$($PY -m pip show "$name" 2>/dev/null | awk '/^Version:/ {print $2}')
    if [ -z "$version" ]; then echo "prepare_gpu: $name is not installed in $PY's environment" >&2; exit 1; fi
    pins+=("$name==$version")
done
rm -rf .whl && mkdir -p .whl
binary=() sdist=()
for pin in "${pins[@]}"; do
    case "$pin" in antlr4-python3-runtime==*) sdist+=("$pin") ;; *) binary+=("$pin") ;; esac
done
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_26_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${binary[@]}"
# antlr4-python3-runtime 4.9.3 (hydra's parser) is published as an sdist only: a pure-Python wheel.
$PY -m pip wheel -q --no-deps -w .whl "${sdist[@]}"
rm -rf .gl && mkdir -p .gl /tmp/amd64/partial
apt_opts=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64)
apt-get "${apt_opts[@]}" update -qq
(cd .gl && apt-get "${apt_opts[@]}" download -qq libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
ls .whl .gl
du -sh .whl .gl
