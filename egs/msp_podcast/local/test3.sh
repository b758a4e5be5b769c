#!/usr/bin/env bash
# MSP-Podcast Test3 (paper Table VIII): labels withheld, scored by the challenge from a
# submitted FileName,EmoClass CSV. Lists the Test3 files, classifies them with a packaged
# model (stage 8) through crab-infer, and writes the CSV with MSP's class letters, checked
# complete (local/test3.py). Re-running resumes crab-infer where it stopped.
#   local/test3.sh --model exp/crab/official/seed42/model --out exp/test3_seed42.csv
#   local/test3.sh --model DIR --text_mode none ...          # a speech-only model
case ${BASH_VERSION:-} in 4.[4-9]* | [5-9].* | [1-9][0-9].*) ;; *) echo "$0 needs bash 4.4 or newer${BASH_VERSION:+ (this is bash ${BASH_VERSION})}: run it as bash $0" >&2; exit 1 ;; esac
set -euo pipefail
unset CDPATH  # a relative cd goes here, never to a namesake on the user's CDPATH
export CRAB_USER_CWD=${CRAB_USER_CWD:-${PWD}}  # the user's directory (not an option)
cd "$(dirname "$0")/.."
model=                            # packaged model directory (stage 8), required
out=                              # the CSV to submit, required
data_dir=data/test3               # Test3 wav.scp
text_mode=asr                     # asr: transcripts from --asr_model, as the model was trained | none: speech only
asr_model=openai/whisper-large-v3 # hub id or local directory
infer_opts="--language english"   # further crab-infer options, e.g. "--device cuda --batch_size 32"
labels=                           # labels CSV (default: <MSP_PODCAST>/Labels/labels_consensus.csv)
partitions=                       # Partitions.txt to use instead of the labels' Split_Set column
. ./db.sh
. ./path.sh
. utils/parse_options.sh
. utils/check_options.sh
check_choice text_mode asr none
# the files named on the command line (and MSP_PODCAST) are read from where it was run;
# --data_dir is the recipe's, as run.sh's is
for opt in model out labels partitions MSP_PODCAST; do
  [[ -z ${!opt} || ${!opt} == /* ]] || printf -v "${opt}" '%s' "${CRAB_USER_CWD}/${!opt}"
done
for required in model out; do
  [ -n "${!required}" ] || { echo "$0: --${required} is required" >&2; exit 1; }
done
[ -d "${MSP_PODCAST}" ] || { echo "$0: set MSP_PODCAST in db.sh (or export it); now '${MSP_PODCAST}'" >&2; exit 1; }

python local/test3.py prepare --corpus_dir "${MSP_PODCAST}" --out_dir "${data_dir}" \
  --labels "${labels}" --partitions "${partitions}"
results=${out%.csv}.predictions.tsv
asr=(); [ "${text_mode}" = none ] || asr=(--asr_model "${asr_model}")
read -r -a extra <<< "${infer_opts}"
python -m crab.bin.infer --model "${model}" --wav_scp "${data_dir}/wav.scp" --out "${results}" \
  --text_mode "${text_mode}" "${asr[@]}" "${extra[@]+"${extra[@]}"}"
python local/test3.py submission --wav_scp "${data_dir}/wav.scp" --results "${results}" --out "${out}"
