# shellcheck shell=bash
# What the scheduler launchers (utils/slurm.sh, utils/sge.sh) share; source me.
#
#   usage, die                                --help from the script's head; a one-line error
#   check_request NARGS GPUS CPUS SUBMITTER SCHEDULER
#                                             the arguments left once the options are read
#   write_job_script [--warned_by SIG] FILE COMMAND [ARG ...]
#                                             bash that runs COMMAND here, its words as given;
#                                             on SIG (the scheduler's warning before the time
#                                             limit) it sends SIGTERM to the job's processes
#   early_stop STOP_BEFORE LIMIT TIME       the seconds to stop a job before its time limit
#                                             (LIMIT seconds, given as --time TIME; LIMIT may be
#                                             empty): STOP_BEFORE, or 0 where the limit is not
#                                             more than twice that (it would stop at once)
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

early_stop() {
  [[ $1 =~ ^[0-9]+$ ]] || die "--stop_before must be a whole number of seconds, not '$1'"
  if [ "$1" -gt 0 ] && [ -n "$2" ] && [ $((2 * $1)) -ge "$2" ]; then
    echo "$0: --stop_before $1 s is half of --time $3 or more: the job is not stopped early" >&2
    echo 0
  else
    echo "$1"
  fi
}

write_job_script() {
  local warned_by=
  if [ "$1" = --warned_by ]; then warned_by=$2; shift 2; fi
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
    if [ -z "${warned_by}" ]; then
      printf 'exec'
      printf ' %q' "$@"
      printf '\n'
    else
      _warned_job "${warned_by}" "$@"
    fi
  } > "${file}"
}

# The job script stays (the command in the background) to hear the warning: it sends SIGTERM
# to its process group (the job's processes: the scheduler made the script its leader; were
# it not, to the command alone), and they stop as at the time limit, a training after saving
# its step. Slurm sends the warning to the script alone, Grid Engine to every process of the
# job, where it would kill them unsaved (USR1's default): the command starts with it ignored,
# and its processes inherit that. A SIGTERM from the scheduler (the limit, a cancel) reaches
# every process itself: the script waits for the command and exits with its status.
_warned_job() {
  local signal=$1
  shift
  cat << 'EOF'
_warned() {  # once: SIGTERM to the process group this script leads (else to the command)
  trap "" "$1"
  local pgrp
  pgrp=$(< "/proc/$$/stat")
  read -r _ _ pgrp _ <<< "${pgrp##*) }"  # after "PID (NAME) ": state, parent, process group
  if [ "${pgrp}" = "$$" ]; then kill -TERM 0; else kill -TERM "${command_pid}"; fi
}
trap ":" TERM  # not "" (ignored): the command would inherit that
EOF
  printf 'trap "" %s  # the command inherits the warning ignored\n' "${signal}"
  printf '%q ' "$@"
  printf '&\n'
  printf 'command_pid=$!\n'
  printf 'trap "_warned %s" %s\n' "${signal}" "${signal}"
  cat << 'EOF'
status=0
wait "${command_pid}" || status=$?  # early on a trapped signal: then again, until it has ended
while kill -0 "${command_pid}" 2> /dev/null; do status=0; wait "${command_pid}" || status=$?; done
exit "${status}"
EOF
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
