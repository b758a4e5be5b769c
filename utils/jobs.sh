# shellcheck shell=bash
# Source me: a stage's runs as jobs (ser.sh --nj, --cmd), each with its own log.
# shellcheck source=utils/parallel.sh
. "$(dirname "${BASH_SOURCE[0]}")/parallel.sh"  # failed_logs
#   jobs_run NJ CMD NGPU LOGDIR BUILD NAME...
#       job i is named NAME_i; the function BUILD, called as BUILD i, leaves its command
#       in the array `job`. NJ workers run the jobs, worker w jobs w, w + NJ, ... one after
#       another. CMD empty: here, worker w on its own NGPU GPUs (CUDA_VISIBLE_DEVICES,
#       jobs_devices) and its share of the cores (OMP_NUM_THREADS: oversubscribed, CPU
#       training ran ~10x slower); else through the launcher CMD (shell words), called as
#       CMD --gpus NGPU LOG COMMAND... (utils/slurm.sh, utils/sge.sh). Each job's output goes to
#       LOGDIR/NAME.log, which ends with "exit status N" (the launcher's own messages
#       before it); a line on standard output says when each starts and ends. Status 1,
#       naming the failed logs, when any job failed.
#   jobs_launcher CMD
#       the words of the launcher CMD, a line each; an error when CMD is not shell words or
#       its program is not found (ser.sh checks --cmd with it before its first stage).
#   jobs_devices NJ NGPU
#       the GPUs of each of NJ workers, a comma-separated line each, from
#       CUDA_VISIBLE_DEVICES, else nvidia-smi; an error when there are fewer than NJ x NGPU.

jobs_launcher() {
  local words
  if ! words=$(python -c 'import shlex, sys; print(*shlex.split(sys.argv[1]), sep="\n")' "$1" 2>&1); then
    echo "--cmd '$1': not shell words (${words##*: })" >&2
    return 1
  fi
  if ! command -v "${words%%$'\n'*}" > /dev/null; then
    echo "--cmd '$1': no program ${words%%$'\n'*} (a path from the recipe directory, or on PATH)" >&2
    return 1
  fi
  echo "${words}"
}

jobs_devices() {
  local nj=$1 ngpu=$2 all=() w
  if [ -n "${CUDA_VISIBLE_DEVICES+set}" ]; then
    IFS=, read -r -a all <<< "${CUDA_VISIBLE_DEVICES}"
  elif command -v nvidia-smi > /dev/null; then
    mapfile -t all < <(nvidia-smi --query-gpu=index --format=csv,noheader)
  fi
  if [ "${#all[@]}" -lt $((nj * ngpu)) ]; then
    echo "--nj ${nj} jobs of --ngpu ${ngpu} GPU(s) each need $((nj * ngpu)) GPUs at once; found ${#all[@]}" \
      "(CUDA_VISIBLE_DEVICES, else nvidia-smi): lower --nj, or run them through a scheduler (--cmd)" >&2
    return 1
  fi
  for ((w = 0; w < nj; w++)); do
    (IFS=,; echo "${all[*]:w * ngpu:ngpu}")
  done
}

jobs_run() {
  local nj=$1 cmd=$2 ngpu=$3 logdir=$4 build=$5
  shift 5
  local names=("$@") devices=() launcher=() failed=() logs=() w name lines threads
  threads=$(( ${OMP_NUM_THREADS:-$(nproc)} / nj )); [ "${threads}" -ge 1 ] || threads=1
  if [ -n "${cmd}" ]; then
    lines=$(jobs_launcher "${cmd}") || return 1
    mapfile -t launcher <<< "${lines}"
  elif [ "${ngpu}" -gt 0 ]; then
    lines=$(jobs_devices "$((nj < ${#names[@]} ? nj : ${#names[@]}))" "${ngpu}") || return 1
    mapfile -t devices <<< "${lines}"
  fi
  mkdir -p "${logdir}"
  for ((w = 0; w < nj && w < ${#names[@]}; w++)); do
    (
      trap 'stopped=1' TERM  # SIGTERM: the running job stops on its own, no other starts
      local here=(OMP_NUM_THREADS="${threads}") stopped=  # a local job's environment
      [ "${#devices[@]}" -eq 0 ] || here+=(CUDA_VISIBLE_DEVICES="${devices[w]}")
      for ((i = w; i < ${#names[@]}; i += nj)); do
        local job=()
        "${build}" "${i}"  # sets job
        local log_file=${logdir}/${names[i]}.log rc=0 out t0=${SECONDS}
        echo "$(date '+%Y-%m-%dT%H:%M:%S') job ${names[i]}: started${devices[w]:+ on GPUs ${devices[w]}} (log: ${log_file})"
        if [ "${#launcher[@]}" -gt 0 ]; then
          out=$("${launcher[@]}" --gpus "${ngpu}" "${log_file}" "${job[@]}" 2>&1) || rc=$?
          [ -z "${out}" ] || echo "${out}" >> "${log_file}"
        else
          env "${here[@]}" "${job[@]}" > "${log_file}" 2>&1 || rc=$?
        fi
        echo "exit status ${rc}" >> "${log_file}"
        echo "$(date '+%Y-%m-%dT%H:%M:%S') job ${names[i]}: exit status ${rc} after $((SECONDS - t0)) s"
        [ -z "${stopped}" ] || break
      done
    ) &
  done
  wait
  for name in "${names[@]}"; do logs+=("${logdir}/${name}.log"); done
  mapfile -t failed < <(failed_logs "${logs[@]}")
  [ "${#failed[@]}" -eq 0 ] && return 0
  echo "${#failed[@]} of ${#names[@]} job(s) failed, see the end of: ${failed[*]}" >&2
  local log stopped=0
  for log in "${failed[@]}"; do [ "$(tail -n 1 "${log}")" != "exit status 143" ] || stopped=$((stopped + 1)); done
  [ "${stopped}" -eq 0 ] ||
    echo "${stopped} of them stopped on SIGTERM (a time limit, a cancel): the same command resumes them" >&2
  return 1
}
