#!/usr/bin/env bash
# Crab on the mini corpus: synthetic emotional speech generated with espeak-ng.
# Demonstrates and tests the whole pipeline offline on CPU; not an SER benchmark.
set -euo pipefail

# ---- options (each can be given as --name value) ----
stage=0                       # first stage to run
stop_stage=100                # last stage to run
corpus_dir=data/corpus        # where stage 0 writes the generated corpus
data_dir=data                 # Kaldi-style data dirs, manifests, tokenizer
exp_dir=exp                   # experiments
config=conf/crab_tiny.yaml    # hyperparameters
tag=                          # experiment name under exp_dir (default: config name)
seeds=42                      # space-separated list of seeds, e.g. "42 43 44"
train_opts=                   # extra --key=value overrides for the yaml
ngpu=0                        # 0: CPU; 1: cuda:0
nj=2                          # parallel jobs for corpus generation
policy=error                  # bad utterances in data prep: error | skip
sentences_per_emotion=0       # 0: all sentences; fewer for a quicker corpus
speakers=6                    # number of synthetic speakers
valid_speakers=spk05          # speaker-independent split
test_speakers=spk06
classes=angry,happy,neutral,sad

help_message="Usage: $0 [--stage N] [--stop_stage M] [--seeds '42 43'] [--train_opts '--alpha=1.5'] ..."

cd "$(dirname "$0")"
. ./path.sh
. utils/log.sh
. utils/parse_options.sh

log "$0 $*"
start=${SECONDS}
[ -n "${tag}" ] || tag=$(basename "${config}" .yaml)
device=cpu
[ "${ngpu}" -gt 0 ] && device=cuda:0
read -r -a extra_opts <<< "${train_opts}"
splits="train valid test"

if [ ${stage} -le 0 ] && [ ${stop_stage} -ge 0 ]; then
  log "Stage 0: generate the synthetic corpus in ${corpus_dir}"
  opts=()
  [ "${sentences_per_emotion}" -gt 0 ] && opts+=(--sentences_per_emotion "${sentences_per_emotion}")
  python local/generate_corpus.py --out_dir "${corpus_dir}" --seed 42 \
    --jobs "${nj}" --speakers "${speakers}" "${opts[@]+"${opts[@]}"}"
fi

if [ ${stage} -le 1 ] && [ ${stop_stage} -ge 1 ]; then
  log "Stage 1: data preparation (speaker-independent split) in ${data_dir}"
  python local/prepare_data.py --corpus_dir "${corpus_dir}" --out_dir "${data_dir}" \
    --valid_speakers "${valid_speakers}" --test_speakers "${test_speakers}"
fi

if [ ${stage} -le 2 ] && [ ${stop_stage} -ge 2 ]; then
  log "Stage 2: checked manifests and the BPE tokenizer"
  for split in ${splits}; do
    python -m crab.bin.make_manifest --data_dir "${data_dir}/${split}" \
      --data_root "${corpus_dir}" --classes "${classes}" --policy "${policy}" \
      --out "${data_dir}/${split}.json"
  done
  python -m crab.tokenizer --manifest "${data_dir}/train.json" \
    --out_dir "${data_dir}/tokenizer" --vocab_size 1000
fi

common_opts() {  # the yaml overrides every stage shares, for seed $1
  echo --data_root="${corpus_dir}" --data_folder="${data_dir}" --seed="$1" \
    --output_folder="${exp_dir}/${tag}/seed$1" --device="${device}"
}

if [ ${stage} -le 3 ] && [ ${stop_stage} -ge 3 ]; then
  for seed in ${seeds}; do
    log "Stage 3: train ${tag}, seed ${seed} (re-running resumes from the last checkpoint)"
    # shellcheck disable=SC2046
    python -m crab.bin.train "${config}" $(common_opts "${seed}") "${extra_opts[@]+"${extra_opts[@]}"}"
  done
fi

if [ ${stage} -le 4 ] && [ ${stop_stage} -ge 4 ]; then
  for seed in ${seeds}; do
    log "Stage 4: evaluate the best checkpoint of ${tag}, seed ${seed}, on test"
    # shellcheck disable=SC2046
    python -m crab.bin.evaluate "${config}" $(common_opts "${seed}") \
      --test_manifest="${data_dir}/test.json" --eval_name=test "${extra_opts[@]+"${extra_opts[@]}"}"
  done
fi

if [ ${stage} -le 5 ] && [ ${stop_stage} -ge 5 ]; then
  log "Stage 5: results table"
  preds=()
  for seed in ${seeds}; do preds+=("${exp_dir}/${tag}/seed${seed}/eval_test/predictions.csv"); done
  python -m crab.bin.score --out "${exp_dir}/${tag}/results_test.md" "${preds[@]}"
fi

log "Finished in $((SECONDS - start)) s"
