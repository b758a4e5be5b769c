# shellcheck shell=bash
# Source me after utils/parse_options.sh: validators for option values. Each stops
# the calling script with a one-line error naming the option.
#   check_int stage stop_stage ngpu      # non-negative integers
#   check_bool embeddings text_only      # true | false
#   check_choice policy error skip       # one of the listed values

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
