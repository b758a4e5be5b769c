# shellcheck shell=bash
# Source me: run commands (programs or shell functions) N at a time, each into its own log.
#   parallel_init N          at most N at once; each gets cores / N torch threads (path.sh
#                            gives every process all the cores: oversubscribed, epochs ran ~10x slower)
#   parallel_run LOG CMD...  start CMD with its output to LOG, once fewer than N run
#   parallel_wait            wait for all; status 1, naming the logs, when any failed
#   failed_logs LOG...       the logs of those that failed (also for utils/jobs.sh's jobs)
# Each log ends with "exit status N": the status of a job that `wait -n` reaped is not
# kept by every bash, the log's line is.
_parallel_max=1
_parallel_logs=()

parallel_init() {
  _parallel_max=$1
  _parallel_logs=()
  export OMP_NUM_THREADS=$(( $(nproc) > $1 ? $(nproc) / $1 : 1 ))
}

parallel_run() {
  local log=$1
  shift
  while [ "$(jobs -rp | wc -l)" -ge "${_parallel_max}" ]; do wait -n || true; done
  _parallel_logs+=("${log}")
  # SIGTERM: the job's status is still written once its command has stopped
  (trap : TERM; rc=0; "$@" > "${log}" 2>&1 || rc=$?; echo "exit status ${rc}" >> "${log}") &
}

parallel_wait() {
  local failed=()
  wait
  mapfile -t failed < <(failed_logs "${_parallel_logs[@]}")
  [ "${#failed[@]}" -eq 0 ] && return 0
  echo "${#failed[@]} job(s) failed, see the end of: ${failed[*]}" >&2
  return 1
}

failed_logs() {  # LOG...: those that do not end with "exit status 0" (a job's success), a line each
  local log
  for log in "$@"; do
    [ "$(tail -n 1 "${log}" 2> /dev/null)" = "exit status 0" ] || echo "${log}"
  done
}
