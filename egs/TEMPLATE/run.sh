#!/usr/bin/env bash
# Crab on <your corpus>. Stages and options: ser.sh (./run.sh --help).
#   ./run.sh                                  # everything
#   ./run.sh --stage 4 --seeds "42 43 44"     # train, evaluate, score for 3 seeds
#   ./run.sh --train_opts "--alpha=1.5"       # any yaml key
set -euo pipefail
cd "$(dirname "$0")"
. ./db.sh

./ser.sh \
  --config conf/crab.yaml \
  --classes angry,happy,neutral,sad \
  --data_root "${CORPUS_ROOT}" \
  --folds main \
  --test_sets test \
  "$@"
