#!/usr/bin/env bash
# "CPU results with substitute encoders" (README.md): Crab speech-only on EmoDB with
# the frozen Whisper-base encoder, on the speaker-pair folds 03+08, 09+10, 11+12,
# 13+14, 15+16, CE only against MLCS (alpha 2), two seeds each. Needs EMODB (db.sh)
# and openai/whisper-base (hub access, or --whisper DIR: a local copy in Hugging Face format).
#   local/cpu_results.sh [--whisper DIR] [--layer N] [--seeds "1 2"] [--stage N] [--parallel true] [--trainval true]
#                        [--folds "fold03_08 ..."] [--data_dir data/pairs] [--exp_dir exp_cpu_whisper_base]
#                        [--extra_opts "--key=value ..."]   (appended to the training overrides)
#                        [--data_opts "--pairing sorted"]   (local/data.sh options of stage 1)
#                        [--finetune_top_layers N]
# --trainval true trains on the 8 non-test speakers (train + valid, as the logistic-regression
# baseline of the README does) for the fixed 10 epochs; the checkpoint is still picked on the
# validation pair, which is then part of the training data (no held-out choice; the test pair
# stays unseen). Its data and experiments go to data/pairs_trainval and exp_cpu_whisper_base_trainval.
# --finetune_top_layers N fine-tunes Whisper's N layers up to the one read (the rest frozen), on a
# cache of the hidden state below them (exp_dir/features_layer<L>_top<N>); runs go to <exp_dir>_top<N>.
# --parallel true trains the seeds at the same time (one process each), then scores all.
# Stages (as ser.sh's): 1-4 data, caches and layer probe; 5-6 training and evaluation; 7 the tables.
# Stage 4 caches the encoder's states once; --layer picks the one hidden state Crab
# reads (3: best mean validation UAR of crab.bin.layer_probe over the five folds,
# printed by stage 4 below; test sets are not read to choose it).
set -euo pipefail
cd "$(dirname "$0")/.."
whisper=openai/whisper-base   # hub id, or a local directory in Hugging Face format
layer=3
seeds="1 2"
stage=1
parallel=false
trainval=false
finetune_top_layers=0
folds="fold03_08 fold09_10 fold11_12 fold13_14 fold15_16"
data_dir=data/pairs
exp_dir=exp_cpu_whisper_base
extra_opts=
data_opts="--pairing sorted"
. ./path.sh
. utils/parse_options.sh
. ./db.sh

encoder="--modality=speech --speech_encoder_source=${whisper} --pretrained_encoders=true --freeze_speech_encoder=true"
head="--normalize_encoder_states=true --hidden_dim=128 --bottleneck_dim=128 --leg_output_dim=128 \
  --lr=1e-3 --batch_size=16 --grad_accumulation_factor=1 --number_of_epochs=10 ${extra_opts}"

if [ "${stage}" -le 4 ]; then
  # Every layer once, for the probe that picks the layer (validation sets only).
  ./run.sh --stage "${stage}" --stop_stage 4 --config conf/crab_base.yaml --data_dir "${data_dir}" \
    --data_opts "${data_opts}" --folds "${folds}" --seeds "${seeds}" --exp_dir "${exp_dir}" \
    --feature_cache "${exp_dir}/features_all_layers" --train_opts "${encoder} --layer_weighting=weighted_sum"
  fold_opts=()
  for f in ${folds}; do fold_opts+=(--fold "${data_dir}/${f}"); done
  python -m crab.bin.layer_probe --cache "${exp_dir}/features_all_layers" --branch speech \
    "${fold_opts[@]}" | tee "${exp_dir}/layer_probe.md"
fi
cache=${exp_dir}/features_layer${layer}
run_dir=${exp_dir} run_data=${data_dir}
if [ "${finetune_top_layers}" -gt 0 ]; then
  # Whisper's layers up to the one read are fine-tuned (encoder_lr) on the cached state below them.
  encoder="${encoder} --freeze_speech_encoder=false --finetune_top_speech_layers=${finetune_top_layers}"
  cache=${cache}_top${finetune_top_layers} run_dir=${exp_dir}_top${finetune_top_layers}
fi
crab() {  # CE only and MLCS over every fold, with the chosen layer's cache: crab SEEDS STAGE STOP_STAGE
  ./sweep.sh --ablations "ce_only mlcs" --stage "$2" --stop_stage "$3" --config conf/crab_base.yaml \
    --data_dir "${run_data}" --folds "${folds}" --seeds "$1" --exp_dir "${run_dir}" \
    --feature_cache "${cache}" --train_opts "${encoder} --layer_weighting=${layer} ${head}"
}
if [ "${stage}" -le 4 ]; then  # on the held-out protocol's manifests: --trainval has the same utterances
  ./run.sh --stage 4 --stop_stage 4 --config conf/crab_base.yaml --data_dir "${data_dir}" --folds "${folds}" \
    --seeds "${seeds}" --exp_dir "${run_dir}" --feature_cache "${cache}" \
    --train_opts "${encoder} --layer_weighting=${layer} ${head}"
fi
if [ "${trainval}" = true ]; then
  run_dir=${run_dir}_trainval run_data=${data_dir}_trainval
  mkdir -p "${run_dir}"
  for f in ${folds}; do  # train = train + valid of the held-out protocol; valid and test as they are
    mkdir -p "${run_data}/${f}"
    python -c 'import json, sys; t, v, out = sys.argv[1:]; json.dump({**json.load(open(t)), **json.load(open(v))}, open(out, "w"), indent=1)' \
      "${data_dir}/${f}/train.json" "${data_dir}/${f}/valid.json" "${run_data}/${f}/train.json"
    cp "${data_dir}/${f}/valid.json" "${data_dir}/${f}/test.json" "${run_data}/${f}/"
  done
fi
if [ "${stage}" -gt 6 ]; then :  # scoring only
elif [ "${parallel}" = true ]; then
  # The cores shared among the processes (path.sh gives each all of them): oversubscribed
  # cores made each epoch ~10x slower here.
  jobs=$(wc -w <<< "${seeds}")
  export OMP_NUM_THREADS=$(( $(nproc) > jobs ? $(nproc) / jobs : 1 ))
  for seed in ${seeds}; do crab "${seed}" 5 6 > "${run_dir}/seed${seed}.log" 2>&1 & done
  wait
else
  crab "${seeds}" 5 6
fi
crab "${seeds}" 7 7
