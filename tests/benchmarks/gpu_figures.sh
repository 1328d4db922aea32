#!/usr/bin/env bash
# Every GPU figure of issue 12 in one run (at most 9 min on one H200: steps time out at 270/160/120 s), written as JSON + Markdown:
#   1. gpu_forward.*          bare forward and Wav2Vec2Extractor.extract, audio s/s, for 32/64/128/256 s
#                             batches x bf16/fp16 autocast (+ weights cast to half), sdpa; eager and
#                             torch.compile at the best batch; half-precision tolerance vs float32
#   2. gpu_pipeline.*         whole pipeline (wav2vec2 only) vs bare vs extractor, paired, + per-stage profile
#   3. gpu_pipeline_egemaps.* wav2vec2 + eGeMAPS on the machine's CPU cores, + per-stage profile (what bounds it)
#   4. bench_ceiling.*        issue 10: decode + store without the model vs the disk (if time is left)
# Audio is synthetic (FLAC white noise, RAVDESS-like lengths) and the model a random full-size
# wav2vec2-base: no data or weights need to travel.
#
# On the GPU machine, from the repo root (wheels from tests/benchmarks/gpu_wheels.sh, carried):
#   bash tests/benchmarks/gpu_figures.sh            # results in $OUT (or tests/benchmarks/results)
# Here, to check it runs (tiny model, CPU, seconds of audio):
#   bash tests/benchmarks/gpu_figures.sh --smoke
set -u -o pipefail
cd "$(dirname "$0")/../.."
SMOKE=0
if [ "$#" -gt 1 ] || { [ "$#" = 1 ] && [ "$1" != "--smoke" ]; }; then
  echo "usage: bash tests/benchmarks/gpu_figures.sh [--smoke]  (got: $*)" >&2
  exit 2
fi
[ "$#" = 1 ] && SMOKE=1
# A smoke run's figures mean nothing: they go to a temporary folder unless OUT names one.
if [ "$SMOKE" = 1 ]; then OUTDIR="${OUT:-/tmp/w2v2ser_gpu_smoke}"; else OUTDIR="${OUT:-tests/benchmarks/results}"; fi
mkdir -p "$OUTDIR"
echo "results: $OUTDIR"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1 W2V2SER_BENCH_CACHE=/tmp/w2v2ser_gpu_figures TOKENIZERS_PARALLELISM=false
# A folder of its own (not a fixed path): a second run on the same machine must not delete a running one's.
WORK=$(mktemp -d "${TMPDIR:-/tmp}/w2v2ser_gpu_work.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

if [ "$SMOKE" = 0 ] && [ -d build/gpu_wheels ]; then
  # Only what the machine's image lacks (it has torch, transformers, numpy, h5py, pyarrow, pyyaml, tqdm).
  "$PY" -m pip install -q --no-index --no-deps --find-links build/gpu_wheels build/gpu_wheels/*.whl \
    2>&1 | tail -3
fi
# Every step imports stage 1: without it, stop here rather than fail each step in turn.
"$PY" - <<'PYEOF' || { echo "gpu_figures.sh: stage 1 cannot be imported (above); carry build/gpu_wheels, made by tests/benchmarks/gpu_wheels.sh" >&2; exit 1; }
import importlib
import sys

sys.path.insert(0, "tests/benchmarks")
missing = []
for name in ("torch", "transformers", "zarr", "zarrs", "numcodecs", "soundfile", "soxr", "opensmile", "pyarrow",
             "pydantic"):
    try:
        module = importlib.import_module(name)
        print(f"{name} {getattr(module, '__version__', '?')}")
    except Exception as error:  # noqa: BLE001
        missing.append(name)
        print(f"{name} MISSING: {error}")
try:
    import _common

    print("w2v2ser", _common.bootstrap_w2v2ser())
    import w2v2ser.extract  # noqa: F401
except Exception as error:  # noqa: BLE001
    missing.append("w2v2ser.extract")
    print(f"w2v2ser.extract MISSING: {error!r}")
sys.exit(1 if missing else 0)
PYEOF
nvidia-smi --query-gpu=name,memory.total,clocks.sm --format=csv 2>/dev/null || true

if [ "$SMOKE" = 1 ]; then
  FORWARD=(--smoke); PIPE=(--device cpu --tiny --synthetic 6 --reps 1); CPUW=2; CEIL_FILES=6
else
  FORWARD=(); PIPE=(--device cuda --synthetic 400 --reps 2); CPUW=$(( $(nproc) - 4 > 1 ? $(nproc) - 4 : 1 ))
  CEIL_FILES=400
fi

# 1. forward sweep and tolerance (~3-4 min)
timeout 270 "$PY" tests/benchmarks/gpu_figures.py "${FORWARD[@]}" --out "$OUTDIR" --name gpu_forward \
  || echo "gpu_figures.py FAILED (rc $?)"
BEST=$("$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))['best_batch_seconds'])" \
  "$OUTDIR/gpu_forward.json" 2>/dev/null || echo 32)
echo "pipeline batch seconds: $BEST"

# 2. whole pipeline, wav2vec2 only, vs bare and extractor, + per-stage profile (~2 min)
timeout 160 "$PY" tests/benchmarks/bench_extract.py "${PIPE[@]}" --features wav2vec2 --batch-seconds "$BEST" \
  --modes bare,extractor,pipeline --profile --workdir "$WORK" --out "$OUTDIR" --name gpu_pipeline \
  || echo "bench_extract.py (wav2vec2) FAILED (rc $?)"

# 3. wav2vec2 + eGeMAPS, CPU features on the machine's cores, + per-stage profile (~1-2 min)
timeout 120 "$PY" tests/benchmarks/bench_extract.py "${PIPE[@]}" --features wav2vec2,egemaps --batch-seconds "$BEST" \
  --modes bare,pipeline_all --profile --cpu-workers "$CPUW" --reps 1 --workdir "$WORK" --out "$OUTDIR" \
  --name gpu_pipeline_egemaps || echo "bench_extract.py (wav2vec2,egemaps) FAILED (rc $?)"
# 4. issue 10's ceiling: the pipeline without the model (decode + store of random frames) vs the
#    disk's raw speed, on the same synthetic audio; only in the time the steps above left (~30 s)
LEFT=$(( 580 - SECONDS ))
if [ "$LEFT" -ge 30 ] && [ -d "$WORK/synthetic_audio" ]; then
  timeout "$LEFT" "$PY" tests/benchmarks/bench_ceiling.py --corpus "$WORK/synthetic_audio" --files "$CEIL_FILES" \
    --workdir "$WORK" --out "$OUTDIR" || echo "bench_ceiling.py FAILED (rc $?)"
else
  echo "bench_ceiling.py skipped: ${LEFT} s left of the run's 580"
fi
rm -rf "$WORK"
ls -la "$OUTDIR"
