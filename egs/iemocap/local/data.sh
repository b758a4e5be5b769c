#!/usr/bin/env bash
# Stage 1 of the IEMOCAP recipe: Kaldi-style data dirs <data_dir>/<fold>/{train,valid,test}
# for every fold of both protocols (folds session1..session5 and Ses01F..Ses05M).
case ${BASH_VERSION:-} in 4.[4-9]* | [5-9].* | [1-9][0-9].*) ;; *) echo "$0 needs bash 4.4 or newer${BASH_VERSION:+ (this is bash ${BASH_VERSION})}: run it as bash $0" >&2; exit 1 ;; esac
set -euo pipefail
. "$(dirname "$0")/../utils/in_recipe_dir.sh"
data_dir=data
data_root=               # IEMOCAP_full_release, holding Session1..Session5
improvised_only=false    # true: improvised dialogs only (scripted sentences repeat across speakers)
check_counts=true        # false: skip the check of the published 4-class counts (partial copies)
. utils/parse_options.sh

python local/prepare_data.py --corpus_dir "${data_root}" --out_dir "${data_dir}" \
  --improvised_only "${improvised_only}" --check_counts "${check_counts}"
