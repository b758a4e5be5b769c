#!/usr/bin/env bash
# "CPU results with substitute encoders" (README.md): text-only Crab on the official MELD
# split from the CSVs alone (no audio), with the frozen all-MiniLM-L6-v2 text encoder:
# plain CE, weighted CE, weighted CE + MLCS (alpha 2), three seeds each, best epoch on dev.
# --finetune true: the same three settings with MiniLM fine-tuned end to end (last layer,
# encoder lr = head lr / 10, as the paper's hierarchical lr), no cache; exp_cpu_minilm_ft.
# Needs MELD (db.sh) pointing at the *_sent_emo.csv files and sentence-transformers/all-MiniLM-L6-v2
# in Hugging Face format.
#   local/cpu_results.sh [--minilm DIR] [--layer N|weighted_sum] [--seeds "1 2 3"] [--stage N] [--parallel true]
#                        [--finetune true] [--ablations "plain_ce ce_only mlcs"] [--data_dir data]
#                        [--exp_dir exp_cpu_minilm, with --finetune exp_cpu_minilm_ft]
#                        [--extra_opts "--key=value ..."]   (appended to the training overrides)
#                        [--data_opts "..."]                (local/data.sh options of stage 1)
# Stage 4 caches the encoder's states once (every layer) and prints crab.bin.layer_probe's
# validation UAR per layer (dev only; the test set is not read to choose).
# --parallel true trains the seeds at the same time (one process each), then scores all.
# Stages (as ser.sh's): 1-4 data, cache and layer probe; 5-6 training and evaluation; 7 the tables.
set -euo pipefail
cd "$(dirname "$0")/.."
minilm=sentence-transformers/all-MiniLM-L6-v2   # hub id, or a local directory in Hugging Face format
layer=weighted_sum
seeds="1 2 3"
stage=1
parallel=false
finetune=false
ablations="plain_ce ce_only mlcs"
data_dir=data
exp_dir=
extra_opts=
data_opts=
. ./path.sh
. utils/parse_options.sh

exp=${exp_dir:-exp_cpu_minilm}
cache=${exp}/features_all_layers
encoder="--modality=text --text_encoder_source=${minilm} --tokenizer_source=${minilm} \
  --pretrained_encoders=true --freeze_text_encoder=true --layer_weighting=weighted_sum"
head="--normalize_encoder_states=true --hidden_dim=128 --bottleneck_dim=128 --leg_output_dim=128 \
  --lr=1e-3 --batch_size=16 --grad_accumulation_factor=1 --number_of_epochs=6 ${extra_opts}"
if [ "${layer}" != weighted_sum ]; then  # one layer: its own cache
  cache=${exp}/features_layer${layer}
  encoder=${encoder/--layer_weighting=weighted_sum/--layer_weighting=${layer}}
fi
if [ "${finetune}" = true ]; then  # 3 epochs of ~625 steps, ~3 min each with both cores free
  exp=${exp_dir:-exp_cpu_minilm_ft} cache=
  encoder="--modality=text --text_encoder_source=${minilm} --tokenizer_source=${minilm} \
  --pretrained_encoders=true --freeze_text_encoder=false --layer_weighting=last"
  head="--hidden_dim=128 --bottleneck_dim=128 --leg_output_dim=128 --lr=5e-4 --encoder_lr=5e-5 \
  --batch_size=16 --grad_accumulation_factor=1 --number_of_epochs=3 --text_max_length=64 ${extra_opts}"
fi

# text only, on the cached states unless --finetune
options=(--text_only true --config conf/crab_base.yaml --data_dir "${data_dir}" --exp_dir "${exp}" --feature_cache "${cache}")
crab() {  # the ablations: crab SEEDS STAGE STOP_STAGE
  ./sweep.sh --ablations "${ablations}" --stage "$2" --stop_stage "$3" --seeds "$1" "${options[@]}" \
    --train_opts "${encoder} ${head}"
}
if [ "${stage}" -le 4 ]; then
  ./run.sh --stage "${stage}" --stop_stage 4 --seeds "${seeds}" "${options[@]}" --data_opts "${data_opts}" --train_opts "${encoder} ${head}"
  if [ -n "${cache}" ] && [ "${layer}" = weighted_sum ]; then
    python -m crab.bin.layer_probe --cache "${cache}" --branch text --fold "${data_dir}/official" | tee "${exp}/layer_probe.md"
  fi
fi
if [ "${stage}" -gt 6 ]; then :  # scoring only
elif [ "${parallel}" = true ]; then
  # The cores shared among the processes (path.sh gives each all of them): oversubscribed
  # cores made each epoch ~10x slower here.
  jobs=$(wc -w <<< "${seeds}")
  export OMP_NUM_THREADS=$(( $(nproc) > jobs ? $(nproc) / jobs : 1 ))
  for seed in ${seeds}; do crab "${seed}" 5 6 > "${exp}/seed${seed}.log" 2>&1 & done
  wait
else
  crab "${seeds}" 5 6
fi
crab "${seeds}" 7 7
