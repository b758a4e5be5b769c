#!/usr/bin/env bash
# Crab on the mini corpus: synthetic emotional speech generated with espeak-ng.
# Demonstrates and tests the whole pipeline offline on CPU; not an SER benchmark.
# Every option of ser.sh can be given here (./run.sh --help), e.g.
#   ./run.sh --stage 5 --seeds "42 43" --train_opts "--alpha=1.0"
#   ./run.sh --corpus_opts "--speakers 4" --data_opts "--valid_speakers spk03 --test_speakers spk04"
case ${BASH_VERSION:-} in 4.[4-9]* | [5-9].* | [1-9][0-9].*) ;; *) echo "$0 needs bash 4.4 or newer${BASH_VERSION:+ (this is bash ${BASH_VERSION})}: run it as bash $0" >&2; exit 1 ;; esac
set -euo pipefail
. "$(dirname "$0")/utils/enter_recipe.sh"

./ser.sh \
  --config conf/crab_tiny.yaml \
  --classes angry,happy,neutral,sad \
  --data_root "${PWD}/data/corpus" \
  --folds main \
  --test_sets test \
  --bpe_vocab_size 1000 \
  "$@"
