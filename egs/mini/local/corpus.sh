#!/usr/bin/env bash
# Stage 0 of the mini recipe: generate the synthetic corpus with espeak-ng.
case ${BASH_VERSION:-} in 4.[4-9]* | [5-9].* | [1-9][0-9].*) ;; *) echo "$0 needs bash 4.4 or newer${BASH_VERSION:+ (this is bash ${BASH_VERSION})}: run it as bash $0" >&2; exit 1 ;; esac
set -euo pipefail
. "$(dirname "$0")/../utils/in_recipe_dir.sh"
data_root=data/corpus       # output: wav/ and metadata.csv
seed=42
nj=2                        # parallel espeak-ng processes
speakers=6                  # number of voices (1-8)
sentences_per_emotion=0     # 0: all 20; fewer for a quicker corpus
. utils/parse_options.sh

opts=()
[ "${sentences_per_emotion}" -gt 0 ] && opts+=(--sentences_per_emotion "${sentences_per_emotion}")
python local/generate_corpus.py --out_dir "${data_root}" --seed "${seed}" \
  --jobs "${nj}" --speakers "${speakers}" "${opts[@]+"${opts[@]}"}"
