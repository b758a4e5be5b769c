# shellcheck shell=bash
# Activate the repository environment (created by tools/install.sh), through the
# recipe's utils link: the recipe may live anywhere.
. "$(dirname "${BASH_SOURCE[0]}")/utils/path.sh"
