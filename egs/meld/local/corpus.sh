#!/usr/bin/env bash
# Stage 0 of the MELD recipe: the audio of every labelled clip, from MELD.Raw's mp4
# files to <data_root>/{train,dev,test}/dia<D>_utt<U>.wav (16 kHz mono 16-bit) with
# ffmpeg. Resumable: existing wavs are kept. Failures are listed in
# <data_root>/log/failed_<split>.txt (local/extract_audio.py).
case ${BASH_VERSION:-} in 4.[4-9]* | [5-9].* | [1-9][0-9].*) ;; *) echo "$0 needs bash 4.4 or newer${BASH_VERSION:+ (this is bash ${BASH_VERSION})}: run it as bash $0" >&2; exit 1 ;; esac
set -euo pipefail
. "$(dirname "$0")/../utils/in_recipe_dir.sh"
. ./db.sh
data_root=${MELD_WAV}      # output wav dir
meld_root=${MELD}          # MELD.Raw
nj=4                       # parallel ffmpeg processes
exclude=local/exclude.txt  # clips known to be broken: their failures are expected; none: no list
. utils/parse_options.sh
if [ -z "${meld_root}" ] || [ ! -d "${meld_root}" ]; then
  echo "$0: set MELD in db.sh (or export it) to the MELD.Raw directory (the *_sent_emo.csv files and mp4 folders); now '${meld_root}'" >&2
  exit 1
fi

python local/extract_audio.py --meld_root "${meld_root}" --out_dir "${data_root}" --nj "${nj}" \
  --exclude "${exclude}"
