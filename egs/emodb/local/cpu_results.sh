#!/usr/bin/env bash
# "CPU results with substitute encoders" (README.md): Crab speech-only on EmoDB with
# the frozen Whisper-base encoder, on the speaker-pair folds 03+08, 09+10, 11+12,
# 13+14, 15+16, CE only against MLCS (alpha 2), two seeds each. Needs EMODB (db.sh)
# and a local Whisper-base directory in Hugging Face format.
#   local/cpu_results.sh [--whisper DIR] [--layer N] [--seeds "1 2"] [--stage N] [--parallel true]
# --parallel true trains the seeds at the same time (one process each), then scores all.
# Stage 3 caches the encoder's states once; --layer picks the one hidden state Crab
# reads (3: best mean validation UAR of crab.bin.layer_probe over the five folds,
# printed by stage 3 below; test sets are not read to choose it).
set -euo pipefail
cd "$(dirname "$0")/.."
whisper=$(cd ../../.. && pwd)/shared/models/whisper-base
layer=3
seeds="1 2"
stage=1
parallel=false
. ./path.sh
. utils/parse_options.sh
. ./db.sh

folds="fold03_08 fold09_10 fold11_12 fold13_14 fold15_16"
data=data/pairs
exp=exp_cpu_whisper_base
encoder="--modality=speech --speech_encoder_source=${whisper} --pretrained_encoders=true --freeze_speech_encoder=true"
head="--normalize_encoder_states=true --hidden_dim=128 --bottleneck_dim=128 --leg_output_dim=128 \
  --lr=1e-3 --batch_size=16 --grad_accumulation_factor=1 --number_of_epochs=10"

if [ "${stage}" -le 3 ]; then
  # Every layer once, for the probe that picks the layer (validation sets only).
  ./run.sh --stage "${stage}" --stop_stage 3 --config conf/crab_base.yaml --data_dir "${data}" \
    --data_opts "--pairing sorted" --folds "${folds}" --seeds "${seeds}" --exp_dir "${exp}" \
    --feature_cache "${exp}/features_all_layers" --train_opts "${encoder} --layer_weighting=weighted_sum"
  python -m crab.bin.layer_probe --cache "${exp}/features_all_layers" --branch speech \
    $(for f in ${folds}; do echo --fold "${data}/${f}"; done) | tee "${exp}/layer_probe.md"
fi
crab() {  # run.sh over every fold, with the chosen layer's cache: crab SEEDS STAGE STOP_STAGE
  ./run.sh --stage "$2" --stop_stage "$3" --config conf/crab_base.yaml --data_dir "${data}" --folds "${folds}" \
    --seeds "$1" --exp_dir "${exp}" --ablations "ce_only mlcs" \
    --feature_cache "${exp}/features_layer${layer}" --train_opts "${encoder} --layer_weighting=${layer} ${head}"
}
if [ "${stage}" -le 3 ]; then
  crab "${seeds}" 3 3
fi
if [ "${parallel}" = true ]; then
  # One thread per training process: oversubscribed cores made each epoch ~10x slower here.
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
  for seed in ${seeds}; do crab "${seed}" 4 5 > "${exp}/seed${seed}.log" 2>&1 & done
  wait
else
  crab "${seeds}" 4 5
fi
crab "${seeds}" 6 6
