#!/usr/bin/env bash
# EmoDB speech only with Whisper-base (RESULTS.md): Crab on the speaker-pair folds 03+08, 09+10,
# 11+12, 13+14, 15+16, weighted CE against weighted CE + MLCS, every method on the same folds and
# seeds. Needs EMODB (db.sh) and openai/whisper-base (hub access, or --whisper DIR: a local copy in
# Hugging Face format).
#   local/cpu_results.sh [--setting frozen|ft1|ft3] [--methods "ce_only mlcs"] [--seeds "1 2"] [--layer 3]
#                        [--jobs N] [--trainval true] [--stage N] [--stop_stage N] [--whisper DIR]
#                        [--folds "fold03_08 ..."] [--data_dir data/pairs] [--exp_dir exp_cpu_whisper_base]
#                        [--extra_opts "--key=value ..."] [--data_opts "--pairing sorted"]
# Each (setting, method) is a committed tuning file, conf/tuning/whisper_<setting>_<method>.yaml:
# frozen (layer 3's states cached), ft1 (layer 3 fine-tuned on cached layer-2 states), ft3
# (layers 1-3 fine-tuned on cached layer-0 states, bf16 autocast). Runs go to <exp_dir> (frozen) or
# <exp_dir>_top<N>, one experiment per method (exp/<method>/<fold>/seed<seed>).
# Stages (as ser.sh's): 1-4 data, the encoder's states cached once and the layer probe (it picked
# layer 3 on the validation pairs, the tuning files' layer_weighting; --layer overrides it); 5-6 training and evaluation, --jobs (method, seed) runs at a time,
# the cores shared among them; 7 the tables, each method's validation curves and chosen number of
# epochs (without --trainval), and the paired comparison with ce_only (crab.bin.paired: by fold and
# seed, and with several seeds and folds also by fold, each fold's seeds averaged).
# --trainval true trains on the 8 non-test speakers (train + valid of the held-out protocol; data in
# <data_dir>_trainval, runs in <run dir>_trainval), with conf/tuning/whisper_<setting>_<method>_8spk.yaml
# where it exists (ft3: the epochs chosen on the held-out protocol, the last epoch kept), else with
# the held-out file (frozen, ft1: best epoch on the validation pair, which is then training data).
# The test pair stays unseen until evaluation.
case ${BASH_VERSION:-} in 4.[4-9]* | [5-9].* | [1-9][0-9].*) ;; *) echo "$0 needs bash 4.4 or newer${BASH_VERSION:+ (this is bash ${BASH_VERSION})}: run it as bash $0" >&2; exit 1 ;; esac
set -euo pipefail
# relative paths given to it (--whisper, the corpus variable) are read from where it was run
export CRAB_USER_CWD=${CRAB_USER_CWD:-${PWD}}
unset CDPATH  # a relative cd goes here, never to a namesake on the user's CDPATH
cd "$(dirname "$0")/.."
whisper=openai/whisper-base   # hub id, or a local directory in Hugging Face format
setting=frozen
layer=3
methods="ce_only mlcs"
seeds="1 2"
stage=1
stop_stage=7
jobs=1
trainval=false
folds="fold03_08 fold09_10 fold11_12 fold13_14 fold15_16"
data_dir=data/pairs
exp_dir=exp_cpu_whisper_base
extra_opts=
data_opts="--pairing sorted"
. ./path.sh
. utils/parse_options.sh
. utils/check_options.sh
resolve_user_path whisper
. utils/parallel.sh
. ./db.sh

case ${setting} in
  frozen) top=0 run_opts= ;;
  ft1) top=1 run_opts= ;;
  ft3) top=3 run_opts="--precision=bf16" ;;  # SpeechBrain's option, not a yaml key
  *) echo "$0: --setting must be frozen, ft1 or ft3, got '${setting}'" >&2; exit 1 ;;
esac
tuning_of() {  # the tuning file of a method: tuning_of METHOD
  local file=conf/tuning/whisper_${setting}_$1
  if [ "${trainval}" = true ] && [ -f "${file}_8spk.yaml" ]; then file+=_8spk; fi
  [ -f "${file}.yaml" ] || { echo "$0: no ${file}.yaml for method '$1' of --setting ${setting}" >&2; return 1; }
  echo "${file}.yaml"
}
for m in ${methods}; do tuning_of "${m}" > /dev/null; done
opts="--speech_encoder_source=${whisper} --layer_weighting=${layer} ${run_opts} ${extra_opts}"
cache=${exp_dir}/features_layer${layer} run_dir=${exp_dir} run_data=${data_dir}
if [ "${top}" -gt 0 ]; then cache+=_top${top} run_dir+=_top${top}; fi

if [ "${stage}" -le 4 ]; then
  # Every layer once, for the probe that picks the layer (validation sets only).
  ./run.sh --stage "${stage}" --stop_stage 4 --config conf/crab_base.yaml --data_dir "${data_dir}" \
    --data_opts "${data_opts}" --folds "${folds}" --seeds "${seeds}" --exp_dir "${exp_dir}" \
    --feature_cache "${exp_dir}/features_all_layers" --train_opts "--modality=speech \
      --speech_encoder_source=${whisper} --pretrained_encoders=true --freeze_speech_encoder=true \
      --layer_weighting=weighted_sum"
  fold_opts=()
  for f in ${folds}; do fold_opts+=(--fold "${data_dir}/${f}"); done
  python -m crab.bin.layer_probe --cache "${exp_dir}/features_all_layers" --branch speech \
    "${fold_opts[@]}" | tee "${exp_dir}/layer_probe.md"
  # The states the setting starts from (the same for every method and for --trainval's utterances).
  first=${methods%% *}
  ./run.sh --stage 4 --stop_stage 4 --tuning "$(tuning_of "${first}")" --data_dir "${data_dir}" \
    --folds "${folds}" --seeds "${seeds}" --exp_dir "${run_dir}" --tag "${first}" \
    --feature_cache "${cache}" --train_opts "${opts}"
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
train() {  # stages 5-6 of one method and seed over every fold: train SEED METHOD
  ./run.sh --stage 5 --stop_stage 6 --tuning "$(tuning_of "$2")" --tag "$2" --data_dir "${run_data}" \
    --folds "${folds}" --seeds "$1" --exp_dir "${run_dir}" --feature_cache "${cache}" --train_opts "${opts}"
}
if [ "${stage}" -le 6 ]; then
  mkdir -p "${run_dir}"
  parallel_init "${jobs}"
  for seed in ${seeds}; do
    for m in ${methods}; do
      echo "training ${m} seed ${seed}: ${run_dir}/${m}_seed${seed}.log"
      parallel_run "${run_dir}/${m}_seed${seed}.log" train "${seed}" "${m}"
    done
  done
  parallel_wait || exit 1
fi
[ "${stop_stage}" -ge 7 ] || exit 0
for m in ${methods}; do
  ./run.sh --stage 7 --stop_stage 7 --tuning "$(tuning_of "${m}")" --tag "${m}" --data_dir "${run_data}" \
    --folds "${folds}" --seeds "${seeds}" --exp_dir "${run_dir}"
  if [ "${trainval}" = false ]; then  # the epochs of the method, on the validation pairs
    train_logs=()
    for f in ${folds}; do for s in ${seeds}; do train_logs+=("${run_dir}/${m}/${f}/seed${s}/train_log.txt"); done; done
    python -m crab.bin.choose_epochs --title "${m}: validation UAR per epoch" \
      --table "${run_dir}/${m}/valid_curves.md" --out "${run_dir}/${m}/chosen_epochs" "${train_logs[@]}"
  fi
done
summaries=() compared=() baseline=
for m in ${methods}; do
  # what stage 7 just wrote: a subset's summary when other seeds of the method are in run_dir
  summary=$(python -m crab.report latest_results "${run_dir}/${m}" test)
  summaries+=("${summary}")
  if [ "${m}" = ce_only ]; then baseline=${summary}; else compared+=("${m}=${summary}"); fi
done
# a table of other runs there is kept (renamed with the paired comparisons written after it)
python -m crab.bin.compare table --title "EmoDB test, ${setting}" --out "${run_dir}/ablations_test.md" \
  --companions "${run_dir}"/paired_test{.md,.png,_by_fold.md} -- "${summaries[@]}"
if [ -n "${baseline}" ] && [ ${#compared[@]} -gt 0 ]; then
  paired=(python -m crab.bin.paired --baseline "ce_only=${baseline}" "${compared[@]}")
  "${paired[@]}" --out "${run_dir}/paired_test.md" --plot "${run_dir}/paired_test.png" \
    --title "Test UAR against weighted CE, ${setting}$([ "${trainval}" = false ] || echo ', 8 training speakers')"
  if [ "$(wc -w <<< "${seeds}")" -gt 1 ] && [ "$(wc -w <<< "${folds}")" -gt 1 ]; then  # the seeds of a fold averaged
    "${paired[@]}" --by_fold --out "${run_dir}/paired_test_by_fold.md"
  fi
fi
