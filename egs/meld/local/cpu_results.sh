#!/usr/bin/env bash
# The CPU results with substitute encoders (RESULTS.md): text-only Crab on the official MELD
# split from the CSVs alone (no audio), with all-MiniLM-L6-v2 as the text encoder, three seeds
# per setting, best epoch on dev. Each setting is a tuning file, conf/tuning/minilm_<kind>_<name>.yaml,
# and an experiment <exp_dir>/minilm_<kind>_<name>/:
#   frozen (default): the encoder frozen, its states cached once; exp_cpu_minilm
#   --finetune true:  the encoder fine-tuned end to end (last layer, encoder lr = head lr / 10,
#                     as the paper's hierarchical lr), no cache; exp_cpu_minilm_ft
# with settings plain_ce (CE, no class weights), ce_only (weighted CE), mlcs (weighted CE + MLCS,
# alpha 2), and for --finetune true also mlcs_e5 (5 epochs). Needs MELD (db.sh) pointing at the
# *_sent_emo.csv files and sentence-transformers/all-MiniLM-L6-v2 (hub access, or --minilm DIR: a
# local copy in Hugging Face format).
#   local/cpu_results.sh [--minilm DIR] [--layer N|weighted_sum] [--seeds "1 2 3"] [--stage N] [--parallel true]
#                        [--finetune true] [--settings "plain_ce ce_only mlcs"] [--data_dir data]
#                        [--exp_dir exp_cpu_minilm, with --finetune exp_cpu_minilm_ft]
#                        [--extra_opts "--key=value ..."]   (after the tuning file's overrides)
#                        [--data_opts "..."]                (local/data.sh options of stage 1)
# Stage 4 caches the encoder's states once (every layer) and prints crab.bin.layer_probe's
# validation UAR per layer (dev only; the test set is not read to choose).
# --parallel true trains the seeds at the same time (one process each), then scores all.
# Stages (as ser.sh's): 1-4 data, cache and layer probe; 5-6 training and evaluation; 7 the tables
# (<exp_dir>/ablations_test.md, and an entry per setting in RESULTS.md).
case ${BASH_VERSION:-} in 4.[4-9]* | [5-9].* | [1-9][0-9].*) ;; *) echo "$0 needs bash 4.4 or newer${BASH_VERSION:+ (this is bash ${BASH_VERSION})}: run it as bash $0" >&2; exit 1 ;; esac
set -euo pipefail
# relative paths given to it (--minilm, the corpus variable) are read from where it was run
export CRAB_USER_CWD=${CRAB_USER_CWD:-${PWD}}
unset CDPATH  # a relative cd goes here, never to a namesake on the user's CDPATH
cd "$(dirname "$0")/.."
minilm=sentence-transformers/all-MiniLM-L6-v2   # hub id (the tuning files'), or a local directory in Hugging Face format
layer=weighted_sum
seeds="1 2 3"
stage=1
parallel=false
finetune=false
settings="plain_ce ce_only mlcs"
data_dir=data
exp_dir=
extra_opts=
data_opts=
. ./path.sh
. utils/parse_options.sh
. utils/check_options.sh
resolve_user_path minilm
. utils/parallel.sh

kind=frozen exp=${exp_dir:-exp_cpu_minilm}
cache=${exp}/features_all_layers
if [ "${finetune}" = true ]; then  # 3 epochs of ~625 steps, ~3 min each with both cores free
  kind=ft exp=${exp_dir:-exp_cpu_minilm_ft} cache=
fi
tunings=()
for name in ${settings}; do
  tuning=conf/tuning/minilm_${kind}_${name}.yaml
  [ -f "${tuning}" ] || { echo "$0: --settings ${name}: no ${tuning} (see conf/tuning/minilm_${kind}_*.yaml)" >&2; exit 1; }
  tunings+=("${tuning}")
done
# What differs from the tuning files: a local copy of the encoder, one layer instead of the sum.
local_opts=
if [ "${minilm}" != sentence-transformers/all-MiniLM-L6-v2 ]; then
  local_opts="--text_encoder_source=${minilm} --tokenizer_source=${minilm}"
fi
if [ "${layer}" != weighted_sum ] && [ "${finetune}" = false ]; then  # one layer: its own cache
  cache=${exp}/features_layer${layer} local_opts+=" --layer_weighting=${layer}"
fi

# text only, on the cached states unless --finetune
options=(--text_only true --data_dir "${data_dir}" --exp_dir "${exp}" --feature_cache "${cache}")
crab() {  # the settings: crab SEEDS STAGE STOP_STAGE
  ./sweep.sh --tunings "${tunings[*]}" --stage "$2" --stop_stage "$3" --seeds "$1" "${options[@]}" \
    --train_opts "${local_opts} ${extra_opts}"
}
if [ "${stage}" -le 4 ]; then
  ./run.sh --stage "${stage}" --stop_stage 4 --seeds "${seeds}" --tuning "${tunings[0]}" "${options[@]}" \
    --data_opts "${data_opts}" --train_opts "${local_opts} ${extra_opts}"
  if [ -n "${cache}" ] && [ "${layer}" = weighted_sum ]; then
    python -m crab.bin.layer_probe --cache "${cache}" --branch text --fold "${data_dir}/official" | tee "${exp}/layer_probe.md"
  fi
fi
if [ "${stage}" -gt 6 ]; then :  # scoring only
elif [ "${parallel}" = true ]; then
  mkdir -p "${exp}"  # for the logs
  parallel_init "$(wc -w <<< "${seeds}")"
  for seed in ${seeds}; do parallel_run "${exp}/seed${seed}.log" crab "${seed}" 5 6; done
  parallel_wait || exit 1  # no scoring of what a failed run left from an earlier one
else
  crab "${seeds}" 5 6
fi
crab "${seeds}" 7 7
