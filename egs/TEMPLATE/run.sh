#!/usr/bin/env bash
# Crab on <your corpus>. Stages and options: ./run.sh --help (ser.sh).
#   ./run.sh                                  # everything
#   ./run.sh --stage 5 --seeds "42 43 44"     # train, evaluate, score, package for 3 seeds
#   ./run.sh --train_opts "--alpha=1.5"       # any yaml key
#   ./sweep.sh --ablations "ce_only mlcs"     # one experiment per ablation, then the table
case ${BASH_VERSION:-} in 4.[4-9]* | [5-9].* | [1-9][0-9].*) ;; *) echo "$0 needs bash 4.4 or newer${BASH_VERSION:+ (this is bash ${BASH_VERSION})}: run it as bash $0" >&2; exit 1 ;; esac
set -euo pipefail
. "$(dirname "$0")/utils/enter_recipe.sh"
. ./db.sh

./ser.sh \
  --config conf/crab.yaml \
  --classes angry,happy,neutral,sad \
  --data_root "${CORPUS_ROOT}" \
  --data_root_var CORPUS_ROOT \
  --folds main \
  --test_sets test \
  "$@"
