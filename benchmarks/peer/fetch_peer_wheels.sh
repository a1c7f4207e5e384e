#!/usr/bin/env bash
# Put NVIDIA's fft_causal_conv1d (PyPI subquadratic-ops-torch-cu13) and its missing runtime deps,
# as CPython 3.12 wheels, into .whl/ (git-ignored) for bench_causal_conv.py --install-wheels .whl
# on the GPU machine, which has no network. The 234 MB wheel is pruned to its sm_90 code (~42 MiB)
# to fit the device tool's 64 MiB carry limit. Run from the repository root on a machine with PyPI.
set -euo pipefail
cd "$(dirname "$0")/../.."
plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
orig=$(mktemp -d)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${plat[@]}" \
  -d "$orig" subquadratic-ops-torch-cu13==0.3.1 apache-tvm-ffi==0.1.15.post2 nvidia-ml-py
mkdir -p .whl
python3 benchmarks/peer/prune_peer_wheel.py "$orig"/subquadratic_ops_torch_cu13-*.whl .whl
cp "$orig"/apache_tvm_ffi-*.whl "$orig"/nvidia_ml_py-*.whl .whl/
du -sh .whl
