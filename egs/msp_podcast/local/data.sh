#!/usr/bin/env bash
# Stage 1 of the MSP-Podcast recipe: Kaldi-style data dirs <data_dir>/official/{train,valid,test1,test2}
# from the official partitions, eight classes (local/prepare_data.py says how).
case ${BASH_VERSION:-} in 4.[4-9]* | [5-9].* | [1-9][0-9].*) ;; *) echo "$0 needs bash 4.4 or newer${BASH_VERSION:+ (this is bash ${BASH_VERSION})}: run it as bash $0" >&2; exit 1 ;; esac
set -euo pipefail
. "$(dirname "$0")/../utils/in_recipe_dir.sh"
data_dir=data
data_root=              # the MSP-Podcast directory, holding Audios/ and Labels/
labels=                 # labels CSV; default: <data_root>/Labels/labels_consensus.csv
partitions=             # Partitions.txt-style file ("Train; <FileName>" lines) to use instead of
                        # the labels' Split_Set column (read from <data_root> when the column is absent)
expected_counts=none    # file of "<split> <class|total> <count>" lines to check; none: only print counts
missing_audio=keep      # a labelled file missing from Audios/: keep (left to stage 3's --policy) | error: stop | skip: leave it out, counted
. utils/parse_options.sh

python local/prepare_data.py --corpus_dir "${data_root}" --out_dir "${data_dir}/official" \
  --labels "${labels}" --partitions "${partitions}" --expected_counts "${expected_counts}" \
  --missing_audio "${missing_audio}"
