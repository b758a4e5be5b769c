#!/usr/bin/env bash
# Crab on the mini corpus: synthetic emotional speech generated with espeak-ng.
# Demonstrates and tests the whole pipeline offline on CPU; not an SER benchmark.
# Every option of ser.sh can be given here, e.g.
#   ./run.sh --stage 4 --seeds "42 43" --train_opts "--alpha=1.0"
#   ./run.sh --corpus_opts "--speakers 4" --data_opts "--valid_speakers spk03 --test_speakers spk04"
set -euo pipefail
cd "$(dirname "$0")"

./ser.sh \
  --config conf/crab_tiny.yaml \
  --classes angry,happy,neutral,sad \
  --data_root data/corpus \
  --folds main \
  --test_sets test \
  --bpe_vocab_size 1000 \
  "$@"
