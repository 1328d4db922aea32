#!/usr/bin/env bash
# Wheels the GPU machine's image lacks (Python 3.12, x86-64), into build/gpu_wheels (git-ignored,
# ~23 MB): carry that folder with the run. Run here, where package registries can be reached.
set -eu
cd "$(dirname "$0")/../.."
PIP="${PIP:-.venv/bin/pip}"
# The image has torch, transformers, tensorstore, numpy, h5py, pyarrow, pyyaml, tqdm, pandas; the rest of
# stage 1's dependencies are below (tests/test_benchmarks.py checks the two cover them all), with
# typing-extensions too: pydantic 2.14 needs 4.16 or newer.
# Emptied first, every name pinned (to this venv's versions): a wheel left from an earlier download beside
# another version of the same package stops the device's install of build/gpu_wheels/*.whl.
rm -rf build/gpu_wheels
mkdir -p build/gpu_wheels
"$PIP" download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
  --platform any -d build/gpu_wheels \
  zarr==3.1.6 zarrs==0.2.3 numcodecs==0.16.6 donfig==0.8.1.post1 google-crc32c==1.9.0 soundfile==0.14.0 soxr==1.1.0 \
  opensmile==2.6.0 audeer==2.7.0 audformat==1.4.3 audinterface==1.4.0 audiofile==1.6.1 audmath==1.4.4 audobject==0.7.13 audresample==1.3.6 iso3166==3.0.0 iso639-lang==2.6.3 oyaml==1.0 asttokens==3.0.2 \
  pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0 cffi==2.1.1 pycparser==3.12
du -sh build/gpu_wheels
