#!/usr/bin/env bash
# EmoDB speech-only with Whisper-base (README.md, "Results" in RESULTS.md): Crab on the
# speaker-pair folds 03+08, 09+10, 11+12, 13+14, 15+16, weighted CE against weighted CE + MLCS,
# every method with the same folds and seeds. Needs EMODB (db.sh) and openai/whisper-base (hub
# access, or --whisper DIR: a local copy in Hugging Face format).
#   local/cpu_results.sh [--whisper DIR] [--layer N] [--seeds "1 2"] [--stage N] [--stop_stage N]
#                        [--ablations "ce_only mlcs"] [--alphas "0.5"] [--jobs N] [--trainval true]
#                        [--finetune_top_layers N] [--folds "fold03_08 ..."] [--data_dir data/pairs]
#                        [--exp_dir exp_cpu_whisper_base] [--extra_opts "--key=value ..."]
#                        [--data_opts "--pairing sorted"]
# Stages (as ser.sh's): 1-4 data, the encoder's states cached once and the layer probe (it picks
# --layer on the validation pairs: 3); 5-6 training and evaluation; 7 the tables (sweep.sh).
# Methods: --ablations (rows of conf/ablations.txt) and --alphas (MLCS with that alpha, tag
# alpha<a>); --jobs N trains N (method, seed) runs at a time, the cores shared among them.
# --finetune_top_layers N fine-tunes Whisper's N layers up to the one read (the rest frozen), on a
# cache of the hidden state below them (exp_dir/features_layer<L>_top<N>); runs go to <exp_dir>_top<N>.
# --trainval true trains on the 8 non-test speakers (train + valid of the held-out protocol; data in
# <data_dir>_trainval, runs in <run dir>_trainval). Pass the epochs chosen on the held-out protocol
# and --ckpt_metric=epoch through --extra_opts, so that the last epoch is kept, not one picked on
# speakers that were trained on; the test pair stays unseen until evaluation.
set -euo pipefail
cd "$(dirname "$0")/.."
whisper=openai/whisper-base   # hub id, or a local directory in Hugging Face format
layer=3
seeds="1 2"
stage=1
stop_stage=7
jobs=1
ablations="ce_only mlcs"
alphas=
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
if [ "${stage}" -le 4 ]; then  # on the held-out protocol's manifests: --trainval has the same utterances
  ./run.sh --stage 4 --stop_stage 4 --config conf/crab_base.yaml --data_dir "${data_dir}" --folds "${folds}" \
    --seeds "${seeds}" --exp_dir "${run_dir}" --feature_cache "${cache}" \
    --train_opts "${encoder} --layer_weighting=${layer} ${head}"
fi
[ "${stop_stage}" -le 4 ] && exit 0
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
methods=${ablations}
for a in ${alphas}; do methods+=" alpha${a}"; done
train() {  # stages 5-6 of one method and seed over every fold: train SEED METHOD
  local setting=(--ablation "$2")
  [[ $2 != alpha* ]] || setting=(--tag "$2" --train_opts "${encoder} --layer_weighting=${layer} ${head} --alpha=${2#alpha}")
  [[ $2 == alpha* ]] || setting+=(--train_opts "${encoder} --layer_weighting=${layer} ${head}")
  ./run.sh --stage 5 --stop_stage 6 --config conf/crab_base.yaml --data_dir "${run_data}" --folds "${folds}" \
    --seeds "$1" --exp_dir "${run_dir}" --feature_cache "${cache}" "${setting[@]}"
}
if [ "${stage}" -le 6 ]; then
  # One process per method and seed, --jobs at a time, the cores shared among them (path.sh
  # gives each all of them: oversubscribed cores made each epoch ~10x slower).
  export OMP_NUM_THREADS=$(( $(nproc) > jobs ? $(nproc) / jobs : 1 ))
  mkdir -p "${run_dir}"
  logs=()
  for seed in ${seeds}; do
    for m in ${methods}; do
      while [ "$(jobs -rp | wc -l)" -ge "${jobs}" ]; do wait -n || true; done
      log=${run_dir}/${m}_seed${seed}.log
      logs+=("${log}")
      echo "training ${m} seed ${seed}: ${log}"
      (rc=0; train "${seed}" "${m}" > "${log}" 2>&1 || rc=$?; echo "exit status ${rc}" >> "${log}") &
    done
  done
  wait
  failed=$(for log in "${logs[@]}"; do tail -n 1 "${log}"; done | grep -vc "^exit status 0$" || true)
  [ "${failed}" -eq 0 ] || { echo "${failed} training job(s) failed: see the ends of ${logs[*]}" >&2; exit 1; }
fi
[ "${stop_stage}" -ge 7 ] || exit 0
./sweep.sh --ablations "${ablations}" ${alphas:+--alphas "${alphas}"} --stage 7 --stop_stage 7 \
  --config conf/crab_base.yaml --data_dir "${run_data}" --folds "${folds}" --seeds "${seeds}" --exp_dir "${run_dir}"
