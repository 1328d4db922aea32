#!/usr/bin/env bash
# Submit a w2v2ser pipeline to SLURM as two chained batch jobs:
#   1. extraction on a GPU partition:      w2v2ser run PIPELINE --stage extract
#   2. after it succeeds (afterok):        w2v2ser run PIPELINE --stage train, then --stage evaluate
# Both jobs run the pipeline in-process or on a LocalCluster inside their allocation (the
# pipeline's `cluster:`; override with W2V2SER_CLUSTER), and both resume: resubmitting after a
# failure or a walltime kill skips finished utterances and fold x seed runs.
#
# Usage: slurm/extract_then_train.sh PIPELINE.yaml [--set KEY=VALUE ...]
# Prints the two job ids ("EXTRACT_ID TRAIN_ID") on stdout.
#
# Settings (environment variables, defaults in brackets):
#   GPU_PARTITION [gpu]     partition of the extraction job
#   CPU_PARTITION [cpu]     partition of the training + evaluation job
#   GPU_GRES      [gpu:1]   --gres of the extraction job; empty = no GPU request (GPU-less clusters)
#   EXTRACT_CPUS  [8]       --cpus-per-task of the extraction job
#   TRAIN_CPUS    [16]      --cpus-per-task of the training job (parallel fold x seed runs)
#   EXTRACT_MEM   [32G]     --mem of the extraction job
#   TRAIN_MEM     [64G]     --mem of the training job
#   EXTRACT_TIME  [08:00:00] --time of the extraction job
#   TRAIN_TIME    [24:00:00] --time of the training job
#   ACCOUNT       []        --account of both jobs, when set
#   LOG_DIR       [slurm-logs]  folder of the jobs' stdout/stderr files (%x-%j.out)
#   W2V2SER       [w2v2ser] the command to run (e.g. "/path/.venv/bin/w2v2ser" or "python -m w2v2ser")
#   W2V2SER_CLUSTER []      when set, passed as --set cluster=VALUE to both jobs (local | none)
#   SBATCH_EXTRA  []        extra sbatch options for both jobs (word-split), e.g. "--qos=short"
set -euo pipefail

if [[ $# -lt 1 || "$1" == "-h" || "$1" == "--help" ]]; then
    sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
PIPELINE=$(readlink -f "$1")
shift
if [[ ! -f "$PIPELINE" ]]; then
    echo "extract_then_train.sh: pipeline file $PIPELINE does not exist" >&2
    exit 2
fi
OVERRIDES=("$@")

GPU_PARTITION=${GPU_PARTITION-gpu}
CPU_PARTITION=${CPU_PARTITION-cpu}
GPU_GRES=${GPU_GRES-gpu:1}
EXTRACT_CPUS=${EXTRACT_CPUS:-8}
TRAIN_CPUS=${TRAIN_CPUS:-16}
EXTRACT_MEM=${EXTRACT_MEM:-32G}
TRAIN_MEM=${TRAIN_MEM:-64G}
EXTRACT_TIME=${EXTRACT_TIME:-08:00:00}
TRAIN_TIME=${TRAIN_TIME:-24:00:00}
ACCOUNT=${ACCOUNT:-}
LOG_DIR=$(readlink -m "${LOG_DIR:-slurm-logs}")
W2V2SER=${W2V2SER:-w2v2ser}
mkdir -p "$LOG_DIR"

if [[ -n "${W2V2SER_CLUSTER:-}" ]]; then
    OVERRIDES+=(--set "cluster=$W2V2SER_CLUSTER")
fi
# Quote every argument once, so the job's shell sees exactly what was passed here.
ARGS=$(printf ' %q' "$PIPELINE" "${OVERRIDES[@]}")

common=(--parsable --chdir "$(dirname "$PIPELINE")" --export ALL)
[[ -n "$ACCOUNT" ]] && common+=(--account "$ACCOUNT")
# shellcheck disable=SC2206  # SBATCH_EXTRA is meant to be word-split
[[ -n "${SBATCH_EXTRA:-}" ]] && common+=(${SBATCH_EXTRA})

extract_opts=(--job-name w2v2ser-extract --output "$LOG_DIR/%x-%j.out"
              --cpus-per-task "$EXTRACT_CPUS" --mem "$EXTRACT_MEM" --time "$EXTRACT_TIME")
[[ -n "$GPU_PARTITION" ]] && extract_opts+=(--partition "$GPU_PARTITION")
[[ -n "$GPU_GRES" ]] && extract_opts+=(--gres "$GPU_GRES")

EXTRACT_ID=$(sbatch "${common[@]}" "${extract_opts[@]}" <<JOB
#!/usr/bin/env bash
set -euo pipefail
echo "w2v2ser extract on \$(hostname) (job \$SLURM_JOB_ID, GPUs: \${CUDA_VISIBLE_DEVICES:-none})"
$W2V2SER run$ARGS --stage extract
JOB
)
EXTRACT_ID=${EXTRACT_ID%%;*}   # --parsable prints "id[;cluster]"

train_opts=(--job-name w2v2ser-train --output "$LOG_DIR/%x-%j.out" --dependency "afterok:$EXTRACT_ID"
            --kill-on-invalid-dep=yes --cpus-per-task "$TRAIN_CPUS" --mem "$TRAIN_MEM" --time "$TRAIN_TIME")
[[ -n "$CPU_PARTITION" ]] && train_opts+=(--partition "$CPU_PARTITION")

TRAIN_ID=$(sbatch "${common[@]}" "${train_opts[@]}" <<JOB
#!/usr/bin/env bash
set -euo pipefail
echo "w2v2ser train + evaluate on \$(hostname) (job \$SLURM_JOB_ID)"
$W2V2SER run$ARGS --stage train
$W2V2SER run$ARGS --stage evaluate
JOB
)
TRAIN_ID=${TRAIN_ID%%;*}

echo "submitted extraction job $EXTRACT_ID ($GPU_PARTITION${GPU_GRES:+, $GPU_GRES}) and training job $TRAIN_ID " \
     "($CPU_PARTITION, after $EXTRACT_ID succeeds); logs in $LOG_DIR" >&2
echo "$EXTRACT_ID $TRAIN_ID"
