#!/usr/bin/env bash
# Crab on EmoDB (Berlin Database of Emotional Speech): 7 classes, 5 speaker-independent
# folds of a male + female pair (README.md). Stages and options: ser.sh (./run.sh --help).
# The text carries no emotion (every sentence is read in every emotion): the main
# result is speech-only; the bimodal default is a control.
#   ./run.sh --tag crab_speech --train_opts "--modality=speech"     # main row
#   ./run.sh                                                         # bimodal control
#   ./run.sh --data_opts "--num_folds 10" --folds "fold03 fold08 fold09 fold10 fold11 fold12 fold13 fold14 fold15 fold16"
#   ./run.sh --data_opts "--pairing sorted" --folds "fold03_08 fold09_10 fold11_12 fold13_14 fold15_16"  # the CPU results' pairs
case ${BASH_VERSION:-} in 4.[4-9]* | [5-9].* | [1-9][0-9].*) ;; *) echo "$0 needs bash 4.4 or newer${BASH_VERSION:+ (this is bash ${BASH_VERSION})}: run it as bash $0" >&2; exit 1 ;; esac
set -euo pipefail
. "$(dirname "$0")/utils/enter_recipe.sh"
. ./db.sh
./ser.sh \
  --config conf/crab.yaml \
  --classes anger,boredom,disgust,fear,happiness,sadness,neutral \
  --data_root "${EMODB}" \
  --data_root_var EMODB \
  --folds "fold03_13 fold10_16 fold09_11 fold12_14 fold08_15" \
  --test_sets test \
  "$@"
