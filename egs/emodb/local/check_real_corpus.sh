#!/usr/bin/env bash
# Check a copy of EmoDB: run the recipe's data preparation on it (file names,
# readable audio, all 10 speakers, 535 utterances with the published per-class
# counts) into a temporary directory, print the per-fold counts, and remove the directory.
# Options after the folder go to local/data.sh.
#   local/check_real_corpus.sh /path/to/emodb                     # the folder holding wav/
#   local/check_real_corpus.sh /path/to/emodb --pairing sorted    # the CPU results' folds
case ${BASH_VERSION:-} in 4.[4-9]* | [5-9].* | [1-9][0-9].*) ;; *) echo "$0 needs bash 4.4 or newer${BASH_VERSION:+ (this is bash ${BASH_VERSION})}: run it as bash $0" >&2; exit 1 ;; esac
set -euo pipefail
unset CDPATH  # a relative cd goes here, never to a namesake on the user's CDPATH
if [ $# -lt 1 ] || [ ! -d "$1" ]; then
  echo "Usage: $0 EMODB_DIR [local/data.sh options] (EMODB_DIR: the EmoDB folder holding wav/)" >&2
  exit 1
fi
corpus=$(cd "$1" && pwd)
shift
cd "$(dirname "$0")/.."
. ./path.sh
tmp=$(mktemp -d)
trap 'rm -rf "${tmp}"' EXIT
local/data.sh --data_root "${corpus}" --data_dir "${tmp}" --check_counts true "$@"
echo "$0: OK: ${corpus} holds EmoDB's 535 utterances with the published per-class counts"
