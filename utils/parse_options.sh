# shellcheck shell=bash
# Source me after declaring option variables with defaults; parses "--name value"
# and "--name=value" into those variables ("-" and "_" are interchangeable in names).
# An option without a declared variable is an error; so is one named like the script's
# internal variables (a leading "_"), which are never options. "--help" prints the calling script's
# ${help_message}, else its header comment and its options: the "name=default  # meaning" lines
# above the line that sources this file. Positional arguments are left in "$@".

_crab_is_option() {  # $1 is a declared, unexported variable of the script, not an internal one
  local flags
  [[ $1 =~ ^[A-Za-z][A-Za-z0-9_]*$ ]] && [ -n "${!1+x}" ] || return 1
  flags=$(declare -p "$1"); flags=${flags#declare -}
  [[ ${flags%% *} != *x* ]]
}
_crab_usage() {  # the header comment and options of script $1, which sources this file
  local self=$1
  # a script that changed directory first (into its recipe) is found from where it was run
  [ -r "${self}" ] || [[ ${self} == /* ]] || self=${OLDPWD:-.}/${self}
  echo "Usage: $1 [--option value ...]   (--option=value works too)"
  echo
  sed -n '2,/^[^#]/{/^#/!d;s/^# \{0,1\}//;p}' "${self}"
  # shellcheck source=utils/log.sh
  . "$(dirname "${BASH_SOURCE[0]}")/log.sh"
  local options
  options=$(options_help "${self}" "" "^[^#]*utils/parse_options[.]sh")
  [ -z "${options}" ] || printf '\nOptions (default in brackets):\n%s\n' "${options}"
}
_crab_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --help|-h)
      if [ -n "${help_message:-}" ]; then echo "${help_message}"; else _crab_usage "${BASH_SOURCE[1]:-$0}"; fi
      exit 0 ;;
    --*=*)
      _crab_name=${1%%=*}; _crab_value=${1#*=}; _crab_spaced=; shift ;;
    --*)
      if [ $# -lt 2 ]; then echo "$0: option $1 needs a value" >&2; exit 1; fi
      _crab_name=$1; _crab_value=$2; _crab_spaced=1; shift 2 ;;
    *)
      _crab_args+=("$1"); shift; continue ;;
  esac
  _crab_name=${_crab_name#--}; _crab_name=${_crab_name//-/_}
  # Options are the script's own variables: not unset names, not exported ones (PATH).
  if ! _crab_is_option "${_crab_name}"; then
    echo "$0: unknown option --${_crab_name}" >&2
    exit 1
  fi
  # "--exp_dir --stop_stage 4": the value forgotten, the next option taken for it
  _crab_next=${_crab_value#--}; _crab_next=${_crab_next//-/_}
  if [ -n "${_crab_spaced}" ] && [[ ${_crab_value} == --* ]] && _crab_is_option "${_crab_next}"; then
    echo "$0: option --${_crab_name} needs a value: it is followed by the option ${_crab_value}" >&2
    exit 1
  fi
  printf -v "${_crab_name}" '%s' "${_crab_value}"
done
set -- "${_crab_args[@]+"${_crab_args[@]}"}"
unset _crab_args _crab_name _crab_value _crab_spaced _crab_next
unset -f _crab_is_option _crab_usage
