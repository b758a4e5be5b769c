#!/usr/bin/env bash
# Stage 1 of the EmoDB recipe: speaker-independent folds as Kaldi-style data dirs
# <data_dir>/<fold>/{train,valid,test}/ (see local/prepare_data.py and README.md).
case ${BASH_VERSION:-} in 4.[4-9]* | [5-9].* | [1-9][0-9].*) ;; *) echo "$0 needs bash 4.4 or newer${BASH_VERSION:+ (this is bash ${BASH_VERSION})}: run it as bash $0" >&2; exit 1 ;; esac
set -euo pipefail
. "$(dirname "$0")/../utils/in_recipe_dir.sh"
data_dir=data
data_root=                  # EmoDB folder holding wav/
num_folds=5                 # 5: a speaker pair per fold; 10: one speaker per fold
pairing=balanced            # the 5 folds' pairs: balanced (male + female) | sorted (03 08, 09 10, ...: the CPU results')
check_counts=true           # false: accept a partial copy (test fixtures); the 535 / per-class check is skipped
. utils/parse_options.sh

python local/prepare_data.py --corpus_dir "${data_root}" --out_dir "${data_dir}" \
  --num_folds "${num_folds}" --pairing "${pairing}" --check_counts "${check_counts}"
