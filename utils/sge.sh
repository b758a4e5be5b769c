#!/usr/bin/env bash
# Run one command as a Grid Engine job (SGE, UGE, OGE) and wait for it: a --cmd for ser.sh.
#
#   utils/sge.sh [--gpus N] [--cpus N] [--mem SIZE] [--time LIMIT] [--queue NAME]
#                [--gpu_resource NAME] [--pe NAME] [--stop_before SECONDS] [--qsub_opts "OPTIONS"]
#                LOG COMMAND [ARG ...]
#
# e.g. ./run.sh --stage 4 --ngpu 1 --nj 10 --cmd "utils/sge.sh --queue g.q --mem 32G"
#
# The job runs COMMAND in the current directory with the current environment (qsub -V:
# the venv that path.sh activated, CRAB_COMMAND), except the core count (OMP_NUM_THREADS:
# the job's slots, NSLOTS); its output (stdout and stderr) goes to LOG, started anew. The job script is
# kept beside LOG as LOG.qsub, to read or resubmit. This script waits for the job
# (qsub -sync y), cancels it (qdel) when interrupted, and exits with the job's status.
# Requests: --gpus N as -l GPU_RESOURCE=N (--gpu_resource, default gpu; --gpus 0, the default,
# asks for none; ser.sh's jobs give --ngpu's value, which replaces one in --cmd), --cpus N as
# -pe PE N (--pe, default smp), --mem as -l mem_free=SIZE, --time as -l h_rt=LIMIT, --queue
# as -q; those left out are the site's defaults. Resource and environment names differ between sites: other
# settings (project, h_vmem, ...) go in --qsub_opts. Where the site's GPU resource is
# consumable per slot, Grid Engine multiplies it by --cpus (-l gpu=1 -pe smp 8 asks for 8
# GPUs): leave --cpus out, or name a per-job resource. Which GPU a job uses is the site's
# choice (most set CUDA_VISIBLE_DEVICES for the job).
#
# --stop_before SECONDS (default 300; 0: none) with --time stops the job that long before its
# time limit: it asks for the soft limit -l s_rt=(h_rt - SECONDS), at which Grid Engine sends
# SIGUSR1 to the job; the job script turns it into SIGTERM, as Slurm's limit sends, so that a
# training saves its step (a paper-size checkpoint is 8 GB) where h_rt would SIGKILL it; the
# same command resumes. Grid Engine kills the job the queue's notify time after the warning
# (qconf -sq QUEUE: notify, often 60 s), before h_rt if that is sooner. Unless SECONDS is 0, a
# site's own s_rt warning stops the job the same way, where SIGUSR1 would otherwise kill its
# processes unsaved. A --time no longer than twice SECONDS is not stopped early.
set -euo pipefail
# shellcheck source=utils/scheduler.sh
. "$(dirname "${BASH_SOURCE[0]}")/scheduler.sh"

gpus=0 cpus='' mem='' time_limit='' queue='' gpu_resource=gpu pe=smp stop_before=300 qsub_opts=''
while [ $# -gt 0 ]; do
  case "$1" in
    --help|-h) usage; exit 0 ;;
    --gpus|--cpus|--mem|--time|--queue|--gpu_resource|--pe|--stop_before|--qsub_opts)
      [ $# -ge 2 ] || die "$1 needs a value"
      case "$1" in
        --gpus) gpus=$2 ;; --cpus) cpus=$2 ;; --mem) mem=$2 ;; --time) time_limit=$2 ;;
        --queue) queue=$2 ;; --gpu_resource) gpu_resource=$2 ;; --pe) pe=$2 ;;
        --stop_before) stop_before=$2 ;; --qsub_opts) qsub_opts=$2 ;;
      esac
      shift 2 ;;
    --*) die "unknown option '$1' (--help lists them)" ;;
    *) break ;;
  esac
done
check_request "$#" "${gpus}" "${cpus}" qsub "Grid Engine"

seconds_of() {  # Grid Engine's time format: [[H:]M:]S; nothing if not that
  local parts p total=0
  IFS=: read -r -a parts <<< "$1"
  [ "${#parts[@]}" -ge 1 ] && [ "${#parts[@]}" -le 3 ] || return 0
  for p in "${parts[@]}"; do
    [[ ${p} =~ ^[0-9]+$ ]] || return 0
    total=$((total * 60 + 10#${p}))
  done
  echo "${total}"
}
limit=$(seconds_of "${time_limit}")
stop_before=$(early_stop "${stop_before}" "${limit}" "${time_limit}") || exit
if [ -n "${time_limit}" ] && [ -z "${limit}" ] && [ "${stop_before}" -gt 0 ]; then
  echo "$0: --time ${time_limit} is not [[H:]M:]S: the job is not stopped early" >&2
fi
log_file=$1
shift
# qsub reads "host:path" in -o
case "${log_file}" in *:*) die "the log path must not hold ':' (qsub reads it as host:path): ${log_file}" ;; esac
mkdir -p "$(dirname "${log_file}")"
: > "${log_file}"  # qsub -o appends: a rerun's log holds this attempt only

script=${log_file}.qsub
if [ "${stop_before}" -gt 0 ]; then
  write_job_script --warned_by USR1 "${script}" "$@"
else
  write_job_script "${script}" "$@"
fi

# A job name must not hold / : @ \ * ? or white space.
name=crab.$(basename "${log_file}" .log | tr '/:@\\*? \t' '_')
read -r -a site_opts <<< "${qsub_opts}"
opts=(-terse -sync y -V -S /bin/bash -cwd -j y -o "${log_file}" -N "${name}")
[ "${gpus}" -eq 0 ] || opts+=(-l "${gpu_resource}=${gpus}")
[ -z "${cpus}" ] || opts+=(-pe "${pe}" "${cpus}")
[ -z "${mem}" ] || opts+=(-l "mem_free=${mem}")
[ -z "${time_limit}" ] || opts+=(-l "h_rt=${time_limit}")
[ "${stop_before}" -eq 0 ] || [ -z "${limit}" ] || opts+=(-l "s_rt=$((limit - stop_before))")
[ -z "${queue}" ] || opts+=(-q "${queue}")

submit_and_wait qdel "${log_file}" qsub "${opts[@]}" "${site_opts[@]+"${site_opts[@]}"}" "${script}"
