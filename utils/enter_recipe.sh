# shellcheck shell=bash
# Source me first in a recipe's run.sh, from wherever the user ran it, with run.sh's
# own arguments:   . "$(dirname "$0")/utils/enter_recipe.sh"
# Exports, once (a run.sh called by another script keeps the outer values):
#   CRAB_USER_CWD  the user's directory: relative corpus paths are resolved from it
#   CRAB_COMMAND   the command as typed, shell-quoted: results record it
# then changes into the recipe directory.
if [ -z "${CRAB_COMMAND:-}" ]; then
  # shellcheck source=utils/log.sh
  . "$(dirname "${BASH_SOURCE[0]}")/log.sh"
  CRAB_COMMAND=$(quote_words "$0" "$@")  # a string to read and paste into a shell
  export CRAB_COMMAND
fi
# shellcheck source=utils/wait_on_term.sh
. "$(dirname "${BASH_SOURCE[0]}")/wait_on_term.sh"  # SIGTERM: wait for the commands running
export CRAB_USER_CWD=${CRAB_USER_CWD:-${PWD}}
unset CDPATH  # a relative cd goes here, never to a namesake on the user's CDPATH
cd "$(dirname "$0")" || exit 1
