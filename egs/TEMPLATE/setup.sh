#!/usr/bin/env bash
# Create a new recipe from this template (as ESPnet's egs2/TEMPLATE/asr1/setup.sh):
#   egs/TEMPLATE/setup.sh egs/mycorpus
# Copies what a corpus edits (run.sh, db.sh, path.sh, local/data.sh, README.md) and links
# what every recipe shares (ser.sh, sweep.sh, utils/, the configs and ablation table),
# so that fixes to the shared stages reach the new recipe. Then follow its README.md.
case ${BASH_VERSION:-} in 4.[4-9]* | [5-9].* | [1-9][0-9].*) ;; *) echo "$0 needs bash 4.4 or newer${BASH_VERSION:+ (this is bash ${BASH_VERSION})}: run it as bash $0" >&2; exit 1 ;; esac
set -euo pipefail
unset CDPATH  # a relative cd goes here, never to a namesake on the user's CDPATH
if [ $# -ne 1 ] || [[ $1 == -* ]]; then
  echo "Usage: $0 NEW_RECIPE_DIR   (e.g. $0 egs/mycorpus)"
  [ "${1:-}" = --help ] || [ "${1:-}" = -h ]; exit
fi
target=$1
template=$(cd "$(dirname "$0")" && pwd)
if [ -e "${target}" ]; then
  echo "$0: ${target} exists: give a new directory" >&2; exit 1
fi
mkdir -p "${target}/conf" "${target}/local"
target=$(cd "${target}" && pwd)
link() {  # link $2 (in the new recipe) to $1 (in the template), by a relative path
  ln -s "$(realpath -s --relative-to="$(dirname "$2")" "$1")" "$2"
}
cp "${template}"/{run.sh,db.sh,path.sh,README.md} "${target}/"
cp "${template}/local/data.sh" "${target}/local/"
link "${template}/ser.sh" "${target}/ser.sh"
link "${template}/sweep.sh" "${target}/sweep.sh"
link "$(readlink -f "${template}/utils")" "${target}/utils"
for f in "${template}"/conf/*; do link "${f}" "${target}/conf/$(basename "${f}")"; done
echo "Created ${target}: set the corpus variable in db.sh, write local/data.sh, set --classes and --folds in run.sh (README.md)"
