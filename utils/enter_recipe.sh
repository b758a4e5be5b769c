# shellcheck shell=bash
# Source me first in a recipe's run.sh, from wherever the user ran it, with run.sh's
# own arguments:   . "$(dirname "$0")/utils/enter_recipe.sh"
# Exports, once (a run.sh called by another script keeps the outer values):
#   CRAB_USER_CWD  the user's directory: relative corpus paths are resolved from it
#   CRAB_COMMAND   the command as typed, shell-quoted: results record it
# then changes into the recipe directory.
if [ -z "${CRAB_COMMAND:-}" ]; then
  CRAB_COMMAND=$0
  for _crab_arg in "$@"; do
    if [[ ${_crab_arg} =~ ^[A-Za-z0-9_./=:,+@%-]+$ ]]; then
      CRAB_COMMAND+=" ${_crab_arg}"
    else  # a string to read and paste into a shell, not to execute from here
      # shellcheck disable=SC2089,SC2090
      CRAB_COMMAND+=" '${_crab_arg//\'/\'\\\'\'}'"
    fi
  done
  unset _crab_arg
  # shellcheck disable=SC2090
  export CRAB_COMMAND
fi
export CRAB_USER_CWD=${CRAB_USER_CWD:-${PWD}}
cd "$(dirname "$0")" || exit 1
