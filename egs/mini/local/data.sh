#!/usr/bin/env bash
# Stage 1 of the mini recipe: a speaker-independent split into Kaldi-style data
# dirs <data_dir>/main/{train,valid,test}.
[ -n "${BASH_VERSION:-}" ] || { echo "$0 needs bash: run it as bash $0" >&2; exit 1; }
set -euo pipefail
. "$(dirname "$0")/../utils/in_recipe_dir.sh"
data_dir=data
data_root=data/corpus
valid_speakers=spk05        # comma-separated
test_speakers=spk06
. utils/parse_options.sh

python local/prepare_data.py --corpus_dir "${data_root}" --out_dir "${data_dir}/main" \
  --valid_speakers "${valid_speakers}" --test_speakers "${test_speakers}"