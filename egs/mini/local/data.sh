#!/usr/bin/env bash
# Stage 1 of the mini recipe: a speaker-independent split into Kaldi-style data
# dirs <data_dir>/main/{train,valid,test}.
case ${BASH_VERSION:-} in 4.[4-9]* | [5-9].* | [1-9][0-9].*) ;; *) echo "$0 needs bash 4.4 or newer${BASH_VERSION:+ (this is bash ${BASH_VERSION})}: run it as bash $0" >&2; exit 1 ;; esac
set -euo pipefail
. "$(dirname "$0")/../utils/in_recipe_dir.sh"
data_dir=data
data_root=data/corpus
valid_speakers=spk05        # comma-separated
test_speakers=spk06
. utils/parse_options.sh

python local/prepare_data.py --corpus_dir "${data_root}" --out_dir "${data_dir}/main" \
  --valid_speakers "${valid_speakers}" --test_speakers "${test_speakers}"