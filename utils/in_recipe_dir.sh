# shellcheck shell=bash
# Source me first in a recipe's local/ stage script:
#   . "$(dirname "$0")/../utils/in_recipe_dir.sh"
# Stage scripts read ./db.sh, utils/ and their relative defaults (data, exp) from the recipe
# directory, where ser.sh runs them; run from anywhere else they would read other files.
_crab_recipe=$(cd "$(dirname "$0")/.." && pwd -P)
if [ "$(pwd -P)" != "${_crab_recipe}" ]; then
  echo "$0: run it from its recipe directory, as the recipe's run.sh does: cd ${_crab_recipe}" >&2
  exit 1
fi
unset _crab_recipe
