#!/usr/bin/env bash
# Stage 1 of the MELD recipe: the official split as Kaldi-style data dirs
# <data_dir>/official/{train,valid,test} (valid = MELD's dev), from MELD.Raw's CSVs;
# the wavs are those of stage 0 under <data_root> (local/prepare_data.py, README.md);
# with --text_only true, from the CSVs alone: no wav.scp, no audio read.
case ${BASH_VERSION:-} in 4.[4-9]* | [5-9].* | [1-9][0-9].*) ;; *) echo "$0 needs bash 4.4 or newer${BASH_VERSION:+ (this is bash ${BASH_VERSION})}: run it as bash $0" >&2; exit 1 ;; esac
set -euo pipefail
. "$(dirname "$0")/../utils/in_recipe_dir.sh"
. ./db.sh
data_dir=data
data_root=${MELD_WAV}      # wav dir of stage 0: <data_root>/{train,dev,test}/dia<D>_utt<U>.wav
meld_root=${MELD}          # MELD.Raw, holding the *_sent_emo.csv files
exclude=local/exclude.txt  # clips left out (known broken audio; not applied with --text_only true); none: no list
check_counts=true          # false: skip the check of the official per-class counts (partial copies)
fix_mojibake=true          # false: keep the CSV text as it is (no repair of UTF-8 read as Windows-1252)
text_only=false            # true: no audio (text-only runs): no wav.scp, every CSV row kept
. utils/parse_options.sh
if [ -z "${meld_root}" ] || [ ! -d "${meld_root}" ]; then
  echo "$0: set MELD in db.sh (or export it) to the MELD.Raw directory (the *_sent_emo.csv files and mp4 folders); now '${meld_root}'" >&2
  exit 1
fi

python local/prepare_data.py --meld_root "${meld_root}" --wav_dir "${data_root}" \
  --out_dir "${data_dir}/official" --exclude "${exclude}" --check_counts "${check_counts}" \
  --fix_mojibake "${fix_mojibake}" --text_only "${text_only}"
