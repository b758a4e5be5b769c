#!/usr/bin/env bash
# Check a copy of EmoDB: run the recipe's data preparation on it (file names,
# readable audio, all 10 speakers, 535 utterances with the published per-class
# counts) into a temporary directory, print the counts, and remove the directory.
#   local/check_real_corpus.sh /path/to/emodb        # the folder holding wav/
set -euo pipefail
if [ $# -ne 1 ] || [ ! -d "$1" ]; then
  echo "Usage: $0 EMODB_DIR (the EmoDB folder holding wav/)" >&2
  exit 1
fi
corpus=$(cd "$1" && pwd)
cd "$(dirname "$0")/.."
. ./path.sh
tmp=$(mktemp -d)
trap 'rm -rf "${tmp}"' EXIT
local/data.sh --data_root "${corpus}" --data_dir "${tmp}" --check_counts true
echo "$0: OK: ${corpus} holds EmoDB's 535 utterances with the published per-class counts"
