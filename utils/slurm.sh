#!/usr/bin/env bash
# Run one command as a Slurm job and wait for it: a --cmd for ser.sh on a Slurm cluster.
#
#   utils/slurm.sh [--gpus N] [--cpus N] [--mem SIZE] [--time LIMIT] [--partition NAME]
#                  [--stop_before SECONDS] [--sbatch_opts "OPTIONS"] LOG COMMAND [ARG ...]
#
# e.g. ./run.sh --stage 4 --ngpu 1 --nj 10 --cmd "utils/slurm.sh --partition gpu --time 1-00:00:00"
#
# The job runs COMMAND in the current directory with the current environment (sbatch's
# default --export=ALL: the venv that path.sh activated, CRAB_COMMAND), except the core
# count (OMP_NUM_THREADS: the job's own, SLURM_CPUS_PER_TASK else nproc); its output goes to LOG. The job script
# is kept beside LOG as LOG.sbatch, to read or resubmit. This script waits for the job
# (sbatch --wait), cancels it when interrupted, and exits with the job's status. --gpus N
# (default 0: no GPU; ser.sh's jobs give --ngpu's value, which replaces one in --cmd) asks for
# --gres gpu:N; --cpus, --mem, --time and --partition left out are the site's defaults. Site
# settings (account, QoS, constraints) go in --sbatch_opts or in Slurm's SBATCH_* environment variables.
#
# --stop_before SECONDS (default 300; 0: none) stops the job that long before its time limit
# (sbatch --signal=B:USR1@SECONDS, which Slurm may send up to a minute earlier): its processes
# get SIGTERM, as at the limit, but with time to spare, so that a training saves its step
# (a paper-size checkpoint is 8 GB) before Slurm's KillWait runs out; the same command resumes.
# A --time no longer than twice SECONDS is not stopped early (the warning would come at once).
set -euo pipefail
# shellcheck source=utils/scheduler.sh
. "$(dirname "${BASH_SOURCE[0]}")/scheduler.sh"

gpus=0 cpus='' mem='' time_limit='' partition='' stop_before=300 sbatch_opts=''
while [ $# -gt 0 ]; do
  case "$1" in
    --help|-h) usage; exit 0 ;;
    --gpus|--cpus|--mem|--time|--partition|--stop_before|--sbatch_opts)
      [ $# -ge 2 ] || die "$1 needs a value"
      case "$1" in
        --gpus) gpus=$2 ;; --cpus) cpus=$2 ;; --mem) mem=$2 ;; --time) time_limit=$2 ;;
        --partition) partition=$2 ;; --stop_before) stop_before=$2 ;; --sbatch_opts) sbatch_opts=$2 ;;
      esac
      shift 2 ;;
    --*) die "unknown option '$1' (--help lists them)" ;;
    *) break ;;
  esac
done
check_request "$#" "${gpus}" "${cpus}" sbatch "Slurm"

seconds_of() {  # Slurm's time formats: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S; nothing if not one
  local days=0 parts
  if [[ $1 =~ ^([0-9]+)-(.+)$ ]]; then days=${BASH_REMATCH[1]}; IFS=: read -r -a parts <<< "${BASH_REMATCH[2]}"
    parts+=(0 0); parts=("${parts[@]:0:3}")  # D-H[:M[:S]]
  else
    IFS=: read -r -a parts <<< "$1"
    case ${#parts[@]} in 1) parts=(0 "${parts[0]}" 0) ;; 2) parts=(0 "${parts[@]}") ;; esac  # M, M:S
  fi
  [ "${#parts[@]}" -eq 3 ] || return 0
  local p; for p in "${parts[@]}"; do [[ ${p} =~ ^[0-9]+$ ]] || return 0; done
  echo $(( ((days * 24 + 10#${parts[0]}) * 60 + 10#${parts[1]}) * 60 + 10#${parts[2]} ))
}
stop_before=$(early_stop "${stop_before}" "$(seconds_of "${time_limit}")" "${time_limit}") || exit
log_file=$1
shift
mkdir -p "$(dirname "${log_file}")"

script=${log_file}.sbatch
if [ "${stop_before}" -gt 0 ]; then
  write_job_script --warned_by USR1 "${script}" "$@"
else
  write_job_script "${script}" "$@"
fi

read -r -a site_opts <<< "${sbatch_opts}"
opts=(--parsable --wait --job-name "crab:$(basename "${log_file}" .log)" --output "${log_file}")
[ "${gpus}" -eq 0 ] || opts+=(--gres "gpu:${gpus}")
[ -z "${cpus}" ] || opts+=(--cpus-per-task "${cpus}")
[ -z "${mem}" ] || opts+=(--mem "${mem}")
[ -z "${time_limit}" ] || opts+=(--time "${time_limit}")
[ -z "${partition}" ] || opts+=(--partition "${partition}")
[ "${stop_before}" -eq 0 ] || opts+=("--signal=B:USR1@${stop_before}")

submit_and_wait scancel "${log_file}" sbatch "${opts[@]}" "${site_opts[@]+"${site_opts[@]}"}" "${script}"
