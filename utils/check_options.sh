# shellcheck shell=bash
# Source me after utils/parse_options.sh: validators for option values. Each stops
# the calling script with a one-line error naming the option.
#   check_int stage stop_stage ngpu      # non-negative integers
#   check_bool embeddings text_only      # true | false
#   check_choice policy error skip       # one of the listed values
#   check_seeds seeds                    # seeds numpy takes as they are, each once
#   check_distinct folds                 # each word once
#   resolve_user_path config tuning      # a relative path: in the recipe directory, else where the command ran

_option_error() {
  echo "$0: --$1 $2" >&2
  exit 1
}

check_int() {
  local name
  for name in "$@"; do
    [[ ${!name} =~ ^[0-9]+$ ]] || _option_error "${name}" "must be a non-negative integer, got '${!name}'"
  done
}

check_bool() {
  local name
  for name in "$@"; do
    case "${!name}" in
      true|false) ;;
      *) _option_error "${name}" "must be true or false, got '${!name}'" ;;
    esac
  done
}

check_choice() {
  local name=$1 value
  shift
  for value in "$@"; do
    [ "${!name}" = "${value}" ] && return 0
  done
  _option_error "${name}" "must be one of: $*; got '${!name}'"
}

check_seeds() {  # the seeds of --$1: at least one, each once, as SpeechBrain's seed_everything takes it
  local name=$1 word words
  read -ra words -d '' <<< "${!name}" || true  # every line, split at blanks; '*' is a value, no file
  [ ${#words[@]} -gt 0 ] || _option_error "${name}" "names no seed"
  for word in "${words[@]}"; do
    # numpy's range; seed_everything takes any other seed as 0. No leading zero: seed042 would be seed 42 again
    if ! [[ ${word} =~ ^(0|[1-9][0-9]{0,9})$ ]] || [ "${word}" -gt 4294967295 ]; then
      _option_error "${name}" "must be integers from 0 to 4294967295 without leading zeros, got '${word}'"
    fi
  done
  check_distinct "${name}"
}

check_distinct() {  # each word of --$1 once
  local name=$1 word words seen=" "
  read -ra words -d '' <<< "${!name}" || true
  for word in "${words[@]+"${words[@]}"}"; do
    [[ ${seen} != *" ${word} "* ]] || _option_error "${name}" "gives ${word} twice (its runs would count twice)"
    seen+="${word} "
  done
}

resolve_user_path() {  # a relative path missing here but present in CRAB_USER_CWD becomes that one
  local name path
  for name in "$@"; do
    path=${!name}
    if [ -n "${path}" ] && [[ ${path} != /* ]] && [ ! -e "${path}" ] && [ -e "${CRAB_USER_CWD:-${PWD}}/${path}" ]; then
      printf -v "${name}" '%s' "${CRAB_USER_CWD:-${PWD}}/${path}"
    fi
  done
}
