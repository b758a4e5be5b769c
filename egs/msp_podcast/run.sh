#!/usr/bin/env bash
# Crab on MSP-Podcast 2.0: 8 classes (anger contempt disgust fear happiness neutral sadness
# surprise), the official partitions as one fold "official" (train / valid = Development /
# test sets test1 and test2), ASR transcripts for every split as in the paper (stage 2).
# README.md has the protocol and every option.
#   ./run.sh --ngpu 1                                   # everything, Whisper large-v3 transcripts
#   ./run.sh --ngpu 1 --asr_model /models/whisper-large-v3   # a local copy of the ASR model
#   ./run.sh --text_source gold --asr_model ""          # gold transcripts (only some files have one)
#   ./run.sh --data_opts "--partitions /path/to/Partitions.txt --expected_counts /path/to/my_counts.txt"
# Every other option goes to ser.sh (./run.sh --help), e.g.
#   ./run.sh --stage 5 --seeds "42 43 44" --train_opts "--alpha=1.5"
# --asr_opts replaces the default "--language english --batch_size 16" as a whole.
case ${BASH_VERSION:-} in 4.[4-9]* | [5-9].* | [1-9][0-9].*) ;; *) echo "$0 needs bash 4.4 or newer${BASH_VERSION:+ (this is bash ${BASH_VERSION})}: run it as bash $0" >&2; exit 1 ;; esac
set -euo pipefail
. "$(dirname "$0")/utils/enter_recipe.sh"
. ./db.sh
./ser.sh \
  --config conf/crab.yaml \
  --classes anger,contempt,disgust,fear,happiness,neutral,sadness,surprise \
  --data_root "${MSP_PODCAST}" \
  --data_root_var MSP_PODCAST \
  --folds official \
  --test_sets "test1 test2" \
  --text_source asr \
  --asr_model openai/whisper-large-v3 \
  --asr_opts "--language english --batch_size 16" \
  "$@"
