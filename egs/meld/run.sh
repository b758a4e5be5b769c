#!/usr/bin/env bash
# Crab on MELD: 7 classes, the official train / dev (validation) / test split, the
# CSV's Utterance as text (README.md). Stage 0 extracts the audio of the mp4 clips
# with ffmpeg. Stages and options: ser.sh (./run.sh --help).
#   ./run.sh                                                   # everything
#   ./run.sh --corpus_opts "--nj 8"                            # stage 0 with 8 ffmpeg processes
#   ./run.sh --stage 5 --tag ce --train_opts "--leg_names=[]"  # an ablation (README.md lists them)
#   ./sweep.sh --ablations "ce_only mlcs"                      # several, and their comparison table
#   ./run.sh --data_opts "--exclude none"                      # keep the clips of local/exclude.txt
#   ./run.sh --text_only true --tag text --train_opts "--modality=text"   # text only, from the CSVs
#                                                              # alone: no mp4, no MELD_WAV (README.md)
case ${BASH_VERSION:-} in 4.[4-9]* | [5-9].* | [1-9][0-9].*) ;; *) echo "$0 needs bash 4.4 or newer${BASH_VERSION:+ (this is bash ${BASH_VERSION})}: run it as bash $0" >&2; exit 1 ;; esac
set -euo pipefail
. "$(dirname "$0")/utils/enter_recipe.sh"
. ./db.sh
# Stages 0 and 1 read MELD.Raw (local/corpus.sh and local/data.sh check it).
case "${MELD}" in ""|/*) ;; *) MELD=${CRAB_USER_CWD}/${MELD} ;; esac
export MELD

./ser.sh \
  --config conf/crab.yaml \
  --classes anger,disgust,fear,joy,neutral,sadness,surprise \
  --data_root "${MELD_WAV}" \
  --data_root_var MELD_WAV \
  --folds official \
  --test_sets test \
  "$@"
