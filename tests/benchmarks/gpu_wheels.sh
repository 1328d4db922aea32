#!/usr/bin/env bash
# Wheels the GPU machine's image lacks (Python 3.12, x86-64), into build/gpu_wheels (git-ignored,
# ~23 MB): carry that folder with the run. Run here, where package registries can be reached.
set -eu
cd "$(dirname "$0")/../.."
PIP="${PIP:-.venv/bin/pip}"
# The image has torch, transformers, tensorstore, numpy, h5py, pyarrow, pyyaml, tqdm, pandas; the rest of
# stage 1's dependencies are below (tests/test_benchmarks.py checks the two cover them all), with
# typing-extensions too: pydantic 2.14 needs 4.16 or newer.
mkdir -p build/gpu_wheels
"$PIP" download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
  --platform any -d build/gpu_wheels \
  zarr==3.1.6 zarrs==0.2.3 numcodecs==0.16.6 donfig google-crc32c soundfile==0.14.0 soxr==1.1.0 \
  opensmile==2.6.0 audeer audformat audinterface audiofile audmath audobject audresample iso3166 iso639-lang oyaml asttokens \
  pydantic==2.14.4 pydantic-core==2.50.5 annotated-types typing-inspection typing-extensions cffi pycparser
du -sh build/gpu_wheels
