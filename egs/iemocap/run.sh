#!/usr/bin/env bash
# Crab on IEMOCAP: 4 classes (happy = hap + exc), gold transcripts, speaker-independent
# cross-validation. Stage 1 writes the folds of both protocols; --protocol picks which
# folds the later stages run (README.md explains both):
#   ./run.sh                                  # loso5: leave one session out, folds session1..session5
#   ./run.sh --protocol loso10                # leave one speaker out, folds Ses01F Ses01M ... Ses05M
#   ./run.sh --folds session1                 # one fold only
#   ./run.sh --data_opts "--improvised_only true" --data_dir data_impro --tag crab_impro
# Every other option goes to ser.sh (./run.sh --help), e.g.
#   ./run.sh --stage 5 --seeds "42 43 44" --train_opts "--alpha=1.5"
case ${BASH_VERSION:-} in 4.[4-9]* | [5-9].* | [1-9][0-9].*) ;; *) echo "$0 needs bash 4.4 or newer${BASH_VERSION:+ (this is bash ${BASH_VERSION})}: run it as bash $0" >&2; exit 1 ;; esac
set -euo pipefail
. "$(dirname "$0")/utils/enter_recipe.sh"
. ./db.sh

protocol=loso5   # loso5 | loso10
args=()          # everything else, for ser.sh (its options all take a value)
help=false
while [ $# -gt 0 ]; do
  case "$1" in
    --protocol) protocol=${2:?--protocol needs a value}; shift 2 ;;
    --protocol=*) protocol=${1#*=}; shift ;;
    --help|-h) help=true; args+=("$1"); shift ;;
    --*=*) args+=("$1"); shift ;;
    --*) args+=("${@:1:2}"); shift $(($# > 1 ? 2 : 1)) ;;
    *) args+=("$1"); shift ;;
  esac
done
case "${protocol}" in
  loso5) folds="session1 session2 session3 session4 session5" ;;
  loso10) folds=$(echo Ses0{1..5}{F,M}) ;;
  *) echo "$0: --protocol must be loso5 or loso10, not '${protocol}'" >&2; exit 1 ;;
esac

./ser.sh \
  --config conf/crab.yaml \
  --classes angry,happy,neutral,sad \
  --data_root "${IEMOCAP}" \
  --data_root_var IEMOCAP \
  --folds "${folds}" \
  --test_sets test \
  "${args[@]+"${args[@]}"}"
if [ "${help}" = true ]; then  # after ser.sh's usage: the option of this run.sh alone
  echo "This recipe's own option (README.md):"
  echo "  --protocol        [loso5] loso5 | loso10: the folds to run (a --folds given wins)"
fi
