# shellcheck shell=bash
# Source me after declaring option variables with defaults; parses "--name value"
# and "--name=value" into those variables ("-" and "_" are interchangeable in names).
# An option without a declared variable is an error. "--help" prints the usage
# from the calling script's ${help_message}. Positional arguments are left in "$@".

_crab_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --help|-h)
      echo "${help_message:-Usage: $0 [--option value ...]}"
      exit 0 ;;
    --*=*)
      _crab_name=${1%%=*}; _crab_value=${1#*=}; shift ;;
    --*)
      if [ $# -lt 2 ]; then echo "$0: option $1 needs a value" >&2; exit 1; fi
      _crab_name=$1; _crab_value=$2; shift 2 ;;
    *)
      _crab_args+=("$1"); shift; continue ;;
  esac
  _crab_name=${_crab_name#--}; _crab_name=${_crab_name//-/_}
  _crab_flags=
  if [[ ${_crab_name} =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] && [ -n "${!_crab_name+x}" ]; then
    _crab_flags=$(declare -p "${_crab_name}"); _crab_flags=${_crab_flags#declare -}
    _crab_flags=${_crab_flags%% *}
  fi
  # Options are the script's own variables: not unset names, not exported ones (PATH).
  if [ -z "${_crab_flags}" ] || [[ ${_crab_flags} == *x* ]]; then
    echo "$0: unknown option --${_crab_name}" >&2
    exit 1
  fi
  printf -v "${_crab_name}" '%s' "${_crab_value}"
done
set -- "${_crab_args[@]+"${_crab_args[@]}"}"
unset _crab_args _crab_name _crab_value _crab_flags
