# shellcheck shell=bash
# Activate the repository environment (created by tools/install.sh).
. "$(dirname "${BASH_SOURCE[0]}")/../../utils/path.sh"
