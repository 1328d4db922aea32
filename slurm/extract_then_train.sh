#!/usr/bin/env bash
# Submit a w2v2ser pipeline to SLURM as two chained batch jobs:
#   1. extraction on a GPU partition:      w2v2ser run PIPELINE --stage extract
#   2. after it succeeds (afterok):        w2v2ser run PIPELINE --stage train, then --stage evaluate
# Both jobs run the pipeline in-process or on a LocalCluster inside their allocation (the
# pipeline's `cluster:`; override with W2V2SER_CLUSTER), and both resume: resubmitting after a
# failure or a walltime kill skips finished utterances and fold x seed runs: a job that fails or
# is stopped ends its log with the command that submits both again. Nothing is submitted unless
# SLURM would take both jobs (sbatch --test-only); otherwise exit 2 with sbatch's reason.
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

usage() {  # the comment block above, without the code after it
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
}
if [[ $# -ge 1 && ( "$1" == "-h" || "$1" == "--help" ) ]]; then
    usage
    exit 0
fi
if [[ $# -lt 1 ]]; then
    usage >&2
    exit 2
fi
PIPELINE=$(readlink -f "$1")
shift
if [[ ! -f "$PIPELINE" ]]; then
    echo "extract_then_train.sh: pipeline file $PIPELINE does not exist" >&2
    exit 2
fi
OVERRIDES=("$@")

# The command that submits these jobs again, settings included: the jobs' logs print it when a
# job fails or is stopped (both jobs resume, so this is how to go on).
RESUBMIT="cd $(printf %q "$PWD") &&"
for name in GPU_PARTITION CPU_PARTITION GPU_GRES EXTRACT_CPUS TRAIN_CPUS EXTRACT_MEM TRAIN_MEM EXTRACT_TIME \
            TRAIN_TIME ACCOUNT LOG_DIR W2V2SER W2V2SER_CLUSTER SBATCH_EXTRA; do
    [[ -n "${!name+set}" ]] && RESUBMIT+=" $name=$(printf %q "${!name}")"
done
RESUBMIT+=$(printf ' %q' "$(readlink -f "$0")" "$PIPELINE" "${OVERRIDES[@]}")

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
if [[ "$LOG_DIR" == *\\* ]]; then  # SLURM then takes the whole --output name as written: one log for all jobs
    echo "extract_then_train.sh: LOG_DIR $LOG_DIR holds a backslash, with which SLURM names every job's log" \
         "%x-%j.out literally; set LOG_DIR to a folder without one" >&2
    exit 2
fi
mkdir -p "$LOG_DIR"
# sbatch reads a % in --output as a pattern (%a, %j, %u...): a folder named `100%a` is written with %%.
LOG_FILE="${LOG_DIR//'%'/'%%'}/%x-%j.out"

if [[ -n "${W2V2SER_CLUSTER:-}" ]]; then
    OVERRIDES+=(--set "cluster=$W2V2SER_CLUSTER")
fi
# Quote every argument once, so the job's shell sees exactly what was passed here.
ARGS=$(printf ' %q' "$PIPELINE" "${OVERRIDES[@]}")

common=(--parsable --chdir "$(dirname "$PIPELINE")" --export ALL)
[[ -n "$ACCOUNT" ]] && common+=(--account "$ACCOUNT")
# shellcheck disable=SC2206  # SBATCH_EXTRA is meant to be word-split
[[ -n "${SBATCH_EXTRA:-}" ]] && common+=(${SBATCH_EXTRA})

extract_opts=(--job-name w2v2ser-extract --output "$LOG_FILE"
              --cpus-per-task "$EXTRACT_CPUS" --mem "$EXTRACT_MEM" --time "$EXTRACT_TIME")
[[ -n "$GPU_PARTITION" ]] && extract_opts+=(--partition "$GPU_PARTITION")
[[ -n "$GPU_GRES" ]] && extract_opts+=(--gres "$GPU_GRES")
train_opts=(--job-name w2v2ser-train --output "$LOG_FILE" --kill-on-invalid-dep=yes
            --cpus-per-task "$TRAIN_CPUS" --mem "$TRAIN_MEM" --time "$TRAIN_TIME")
[[ -n "$CPU_PARTITION" ]] && train_opts+=(--partition "$CPU_PARTITION")

# Ask SLURM first whether it would take both jobs (sbatch --test-only): a refused training job
# (an unknown partition, more cores or memory than a node has) left the extraction job queued
# alone, and SLURM accepts such a job only to keep it pending forever.
check_job() {  # WHAT SETTINGS SBATCH_OPTIONS...
    local what=$1 settings=$2 out
    shift 2
    if ! out=$(sbatch --test-only "$@" --wrap true 2>&1); then
        echo "extract_then_train.sh: SLURM refuses the $what job ($settings): ${out//$'\n'/; }" >&2
        echo "extract_then_train.sh: nothing was submitted; fix the settings (--help lists them) and run it again" >&2
        exit 2
    fi
}
shared_settings=""  # options of both jobs, when set: either may be what sbatch refuses
[[ -n "$ACCOUNT" ]] && shared_settings+=" ACCOUNT=$ACCOUNT"
[[ -n "${SBATCH_EXTRA:-}" ]] && shared_settings+=" SBATCH_EXTRA=$SBATCH_EXTRA"
extract_settings="GPU_PARTITION=$GPU_PARTITION GPU_GRES=$GPU_GRES EXTRACT_CPUS=$EXTRACT_CPUS EXTRACT_MEM=$EXTRACT_MEM"
extract_settings+="$shared_settings"
train_settings="CPU_PARTITION=$CPU_PARTITION TRAIN_CPUS=$TRAIN_CPUS TRAIN_MEM=$TRAIN_MEM TRAIN_TIME=$TRAIN_TIME"
train_settings+="$shared_settings"
check_job extraction "$extract_settings EXTRACT_TIME=$EXTRACT_TIME" "${common[@]}" "${extract_opts[@]}"
check_job training "$train_settings" "${common[@]}" "${train_opts[@]}"

# What a job's log says after a failure or a stop (scancel, a time limit: SIGTERM reaches the job's
# shell too, which runs its trap once w2v2ser has stopped).
HINT_FUNCTION="hint() { echo 'extract_then_train.sh: finished work is kept; to go on, submit again:' >&2
    printf '  %s\\n' $(printf %q "$RESUBMIT") >&2; }"

EXTRACT_ID=$(sbatch "${common[@]}" "${extract_opts[@]}" <<JOB
#!/usr/bin/env bash
set -euo pipefail
$HINT_FUNCTION
stopped() { hint; echo "extract_then_train.sh: the training job that waits for this one is cancelled with it" >&2; }
trap 'stopped; exit 143' TERM
echo "w2v2ser extract on \$(hostname) (job \$SLURM_JOB_ID, GPUs: \${CUDA_VISIBLE_DEVICES:-none})"
$W2V2SER run$ARGS --stage extract || { code=\$?; stopped; exit \$code; }
JOB
)
EXTRACT_ID=${EXTRACT_ID%%;*}   # --parsable prints "id[;cluster]"

if ! TRAIN_ID=$(sbatch "${common[@]}" "${train_opts[@]}" --dependency "afterok:$EXTRACT_ID" <<JOB
#!/usr/bin/env bash
set -euo pipefail
$HINT_FUNCTION
trap 'hint; exit 143' TERM
echo "w2v2ser train + evaluate on \$(hostname) (job \$SLURM_JOB_ID)"
$W2V2SER run$ARGS --stage train || { code=\$?; hint; exit \$code; }
$W2V2SER run$ARGS --stage evaluate || { code=\$?; hint; exit \$code; }
JOB
); then
    scancel "$EXTRACT_ID" || true
    echo "extract_then_train.sh: the training job was not submitted (sbatch's error above), so extraction job" \
         "$EXTRACT_ID is cancelled; nothing is queued" >&2
    exit 1
fi
TRAIN_ID=${TRAIN_ID%%;*}

echo "submitted extraction job $EXTRACT_ID ($GPU_PARTITION${GPU_GRES:+, $GPU_GRES}) and training job $TRAIN_ID" \
     "($CPU_PARTITION, after $EXTRACT_ID succeeds); logs in $LOG_DIR" >&2
echo "$EXTRACT_ID $TRAIN_ID"
