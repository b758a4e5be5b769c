#!/usr/bin/env bash
# Shared stages of every Crab recipe (linked from egs/<corpus>/ser.sh).
# A recipe's run.sh sets its options and calls this script; the corpus-specific
# parts live in the recipe's local/: corpus.sh (optional: build or extract the
# audio), data.sh (write Kaldi-style data dirs data/<fold>/<split>/).
#
#   0  corpus        local/corpus.sh --data_root DIR ${corpus_opts} (skipped when absent)
#   1  data prep     local/data.sh --data_dir DIR --data_root DIR ${data_opts}
#   2  transcription ASR transcripts (text.asr) into each data dir (only with --asr_model)
#   3  manifests     data/<fold>/<split>.json, checked, with per-class counts;
#                    with --bpe_vocab_size, a BPE tokenizer data/<fold>/tokenizer
#                    from the training transcripts (for tiny random-init text encoders)
#   4  train         one run per fold and seed
#   5  evaluate      best checkpoint on each test set
#   6  score         results table per test set, mean ± std over folds and seeds
set -euo pipefail

# ---- options (each can be given as --name value) ----
stage=0                 # first stage to run
stop_stage=100          # last stage to run
data_dir=data           # data dirs and manifests
exp_dir=exp             # experiments
config=                 # hyperparameters (yaml), required
tag=                    # experiment name under exp_dir (default: config name)
folds=main              # space-separated fold names: data/<fold>/ for each
seeds=42                # space-separated seeds
test_sets=test          # space-separated test split names
classes=                # comma-separated labels in the config's order, required
data_root=              # where the audio lives, written as {data_root} in manifests, required
corpus_opts=            # options for local/corpus.sh
data_opts=              # options for local/data.sh
policy=error            # bad utterances at stage 2: error (stop) | skip (count, leave out)
asr_model=              # stage 2: Hugging Face ASR model (hub id or directory); empty: skip
asr_opts=               # extra options for crab.bin.transcribe
text_source=gold        # manifests' text: gold (data dir's text) | asr (text.asr from stage 2)
bpe_vocab_size=0        # > 0: build data/<fold>/tokenizer at stage 3 (tiny configs)
train_opts=             # extra --key=value overrides for the yaml
ngpu=0                  # 0: CPU; 1: cuda:0

help_message="Usage: $0 --config CONF --classes a,b,c --data_root DIR [--stage N] [--stop_stage M] [--folds 'f1 f2'] [--seeds '42 43'] [--train_opts '--key=value ...']"

. ./path.sh
. utils/log.sh
log "$0 $*"
. utils/parse_options.sh

start=${SECONDS}
for required in config classes data_root; do
  if [ -z "${!required}" ]; then
    log "Error: --${required} is required"; exit 1
  fi
done
[ -n "${tag}" ] || tag=$(basename "${config}" .yaml)
device=cpu
[ "${ngpu}" -gt 0 ] && device=cuda:0
read -r -a extra_opts <<< "${train_opts}"
read -r -a asr_extra <<< "${asr_opts}"
splits="train valid ${test_sets}"

if [ ${stage} -le 0 ] && [ ${stop_stage} -ge 0 ] && [ -x local/corpus.sh ]; then
  log "Stage 0: corpus preparation (local/corpus.sh)"
  # shellcheck disable=SC2086
  local/corpus.sh --data_root "${data_root}" ${corpus_opts}
fi

if [ ! -d "${data_root}" ]; then
  log "Error: data_root '${data_root}' is not a directory: set the corpus location in db.sh (or pass --data_root)"
  exit 1
fi

if [ ${stage} -le 1 ] && [ ${stop_stage} -ge 1 ]; then
  log "Stage 1: data preparation (local/data.sh) into ${data_dir}"
  # shellcheck disable=SC2086
  local/data.sh --data_dir "${data_dir}" --data_root "${data_root}" ${data_opts}
fi

if [ ${stage} -le 2 ] && [ ${stop_stage} -ge 2 ] && [ -n "${asr_model}" ]; then
  log "Stage 2: ASR transcripts with ${asr_model}"
  for fold in ${folds}; do
    for split in ${splits}; do
      python -m crab.bin.transcribe --data_dir "${data_dir}/${fold}/${split}" \
        --model "${asr_model}" --device "${device}" "${asr_extra[@]+"${asr_extra[@]}"}"
    done
  done
fi

if [ ${stage} -le 3 ] && [ ${stop_stage} -ge 3 ]; then
  log "Stage 3: checked manifests (policy: ${policy}, text: ${text_source})"
  for fold in ${folds}; do
    for split in ${splits}; do
      python -m crab.bin.make_manifest --data_dir "${data_dir}/${fold}/${split}" \
        --data_root "${data_root}" --classes "${classes}" --policy "${policy}" \
        --text_source "${text_source}" --out "${data_dir}/${fold}/${split}.json"
    done
    if [ "${bpe_vocab_size}" -gt 0 ]; then
      python -m crab.tokenizer --manifest "${data_dir}/${fold}/train.json" \
        --out_dir "${data_dir}/${fold}/tokenizer" --vocab_size "${bpe_vocab_size}"
    fi
  done
fi

run_opts() {  # overrides every training and evaluation run shares: fold $1, seed $2
  echo --data_root="${data_root}" --data_folder="${data_dir}/$1" --seed="$2" --classes="[${classes}]" \
    --output_folder="${exp_dir}/${tag}/$1/seed$2" --device="${device}"
}

if [ ${stage} -le 4 ] && [ ${stop_stage} -ge 4 ]; then
  for fold in ${folds}; do
    for seed in ${seeds}; do
      log "Stage 4: train ${tag}, fold ${fold}, seed ${seed} (re-running resumes)"
      # shellcheck disable=SC2046
      python -m crab.bin.train "${config}" $(run_opts "${fold}" "${seed}") \
        "${extra_opts[@]+"${extra_opts[@]}"}"
    done
  done
fi

if [ ${stage} -le 5 ] && [ ${stop_stage} -ge 5 ]; then
  for fold in ${folds}; do
    for seed in ${seeds}; do
      for test_set in ${test_sets}; do
        log "Stage 5: evaluate ${tag}, fold ${fold}, seed ${seed} on ${test_set}"
        # shellcheck disable=SC2046
        python -m crab.bin.evaluate "${config}" $(run_opts "${fold}" "${seed}") \
          --test_manifest="${data_dir}/${fold}/${test_set}.json" --eval_name="${test_set}" \
          "${extra_opts[@]+"${extra_opts[@]}"}"
      done
    done
  done
fi

if [ ${stage} -le 6 ] && [ ${stop_stage} -ge 6 ]; then
  for test_set in ${test_sets}; do
    log "Stage 6: results on ${test_set} over folds (${folds}) and seeds (${seeds})"
    preds=()
    for fold in ${folds}; do
      for seed in ${seeds}; do
        preds+=("${exp_dir}/${tag}/${fold}/seed${seed}/eval_${test_set}/predictions.csv")
      done
    done
    python -m crab.bin.score --out "${exp_dir}/${tag}/results_${test_set}.md" "${preds[@]}"
  done
fi

log "Finished in $((SECONDS - start)) s"
