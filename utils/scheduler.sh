# shellcheck shell=bash
# What the scheduler launchers (utils/slurm.sh, utils/sge.sh) share; source me.
#
#   usage, die                                --help from the script's head; a one-line error
#   check_request NARGS GPUS CPUS SUBMITTER SCHEDULER
#                                             the arguments left once the options are read
#   write_job_script FILE COMMAND [ARG ...]   bash that runs COMMAND here, its words as given
#   submit_and_wait CANCEL LOG SUBMIT ...     run SUBMIT (it prints the job id on its first
#                                             line, then waits for the job); an interrupt
#                                             runs CANCEL ID; exits with the job's status

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; }
die() { echo "$0: $*" >&2; exit 2; }

check_request() {
  [ "$1" -ge 2 ] || die "needs a LOG and a COMMAND (--help)"
  [[ $2 =~ ^[0-9]+$ ]] || die "--gpus must be a whole number, not '$2'"
  [ -z "$3" ] || [[ $3 =~ ^[1-9][0-9]*$ ]] || die "--cpus must be a positive whole number, not '$3'"
  command -v "$4" > /dev/null || die "$4 not found: $5's commands must be on PATH (or run without --cmd)"
}

write_job_script() {
  local file=$1
  shift
  {
    echo "#!/usr/bin/env bash"
    echo "# $(date '+%Y-%m-%dT%H:%M:%S') submitted by $0 from $(pwd)"
    printf 'cd %q\n' "$(pwd)"
    # the cores of this job, not those of the submitting shell: Grid Engine's slots, Slurm's
    # CPUs per task, else those the job may run on (Grid Engine often binds none: nproc would
    # count the whole node's; nproc reads OMP_NUM_THREADS)
    # shellcheck disable=SC2016
    echo 'unset OMP_NUM_THREADS; export OMP_NUM_THREADS=${NSLOTS:-${SLURM_CPUS_PER_TASK:-$(nproc)}}'
    printf 'exec'
    printf ' %q' "$@"
    printf '\n'
  } > "${file}"
}

# The submitter runs in the background, so that an interrupt here cancels the job instead
# of leaving it running. sbatch --parsable prints "ID[;CLUSTER]", qsub -terse "ID".
submit_and_wait() {
  local cancel_cmd=$1 log_file=$2
  shift 2
  _job_id_file=$(mktemp)
  _cancel_cmd=${cancel_cmd}
  trap 'rm -f "${_job_id_file}"' EXIT
  trap _cancel_job INT TERM
  local status=0 id
  "$@" > "${_job_id_file}" &
  wait $! || status=$?
  id=$(_job_id)
  if [ "${status}" -ne 0 ]; then
    echo "$0: job ${id:-(not submitted)} failed (status ${status}); its output: ${log_file}" >&2
    exit "${status}"
  fi
  echo "job ${id} done; its output: ${log_file}"
}

_job_id() { head -n 1 "${_job_id_file}" | cut -d';' -f1; }

_cancel_job() {
  local id
  id=$(_job_id)
  [ -z "${id}" ] || "${_cancel_cmd}" "${id}" || true
  echo "$0: interrupted; job ${id:-(not yet submitted)} cancelled" >&2
  exit 130
}
