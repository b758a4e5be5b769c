#!/usr/bin/env bash
# Crab on <your corpus>. Stages and options: ser.sh (./run.sh --help).
#   ./run.sh                                  # everything
#   ./run.sh --stage 4 --seeds "42 43 44"     # train, evaluate, score for 3 seeds
#   ./run.sh --train_opts "--alpha=1.5"       # any yaml key
set -euo pipefail
cd "$(dirname "$0")"
. ./db.sh
if [ -z "${CORPUS_ROOT}" ] || [ ! -d "${CORPUS_ROOT}" ]; then
  echo "$0: set CORPUS_ROOT in db.sh (or export it) to the corpus directory; now '${CORPUS_ROOT}'" >&2
  exit 1
fi

./ser.sh \
  --config conf/crab.yaml \
  --classes angry,happy,neutral,sad \
  --data_root "${CORPUS_ROOT}" \
  --folds main \
  --test_sets test \
  "$@"
