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
#                    from the training transcripts (for tiny random-init text encoders);
#                    with --feature_cache DIR, the frozen encoders' states of every split
#                    into DIR (crab.bin.extract_features: sharded, resumable, shared by
#                    folds, ablations and sweeps; training and evaluation then read it)
#   4  train         one run per fold and seed (train_info.json: wall time, commit, machine, command);
#                    with --ngpu N > 1 (or --nproc N > 1 on CPU) each run is N DDP processes
#                    (torchrun; --torchrun_opts for several nodes); stages 5-8 use one process
#   5  evaluate      best checkpoint on each test set (with --embeddings true, also the
#                    fused test embeddings and their cluster scores)
#   6  score         per run: scores.json, per_class.md, confusion.png; per experiment and
#                    test set: results_<test>.{md,json}, mean ± std over folds and seeds
# With --ablations "ce_only mlcs ...", stages 4-6 run once per ablation named in
# conf/ablations.txt (tag = its name) and stage 6 writes one comparison table
# exp/ablations_<test>.md (paper Tables III/IV).
#   7  package       best checkpoint of each experiment of stages 4-6, fold and seed as a
#                    self-contained inference model ${exp_dir}/<tag>/<fold>/seed<seed>/model
#                    (crab.bin.package; load it with crab.inference.CrabClassifier, or crab-infer)
#   8  alpha sweep   with --alphas "0.25 0.5 ...": stages 4-6 for alpha<a> and ce_only,
#                    then exp/alpha_<test>.{md,png} (paper Fig. 3)
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
policy=error            # bad utterances at stage 3: error (stop) | skip (count, leave out)
asr_model=              # stage 2: Hugging Face ASR model (hub id or directory); empty: skip
asr_opts=               # extra options for crab.bin.transcribe
text_source=gold        # manifests' text: gold (data dir's text) | asr (text.asr from stage 2)
bpe_vocab_size=0        # > 0: build data/<fold>/tokenizer at stage 3 (tiny configs)
train_opts=             # extra --key=value overrides for the yaml
ngpu=0                  # 0: CPU; 1: cuda:0; N > 1: stage 4 trains on N GPUs (DDP, nccl), later stages on cuda:0
nproc=1                 # with --ngpu 0, N > 1: stage 4 trains with N CPU processes (DDP, gloo)
torchrun_opts=          # torchrun options of a DDP stage 4 (empty: one node, --standalone), e.g. on each of 2 nodes
                        # "--nnodes 2 --node_rank 0 --master_addr HOST --master_port 29500" (node_rank 1 on the other;
                        # exp_dir on a filesystem the nodes share)
ablations=              # stages 4-6 once per ablation name (e.g. "ce_only mlcs"), tag = name; empty: one run (--tag)
ablation_table=         # ablation name -> yaml overrides (default: conf/ablations.txt, else the TEMPLATE's)
alphas=                 # stage 8: alpha sweep over these values (paper: 0.25 ... 3.00); empty: skip
embeddings=false        # stage 5: also dump and score the fused (fc1) test embeddings (true | false)
feature_cache=          # directory for frozen-encoder states (stage 3 extracts, stages 4-8 read); empty: none.
                        # Needs frozen encoders: --train_opts "--freeze_speech_encoder=true ..."
text_only=false         # true: no audio (text-only baselines): stage 0 skipped, data_root need not exist,
                        # local/data.sh gets --text_only true (writes no wav.scp; the recipe's must accept it),
                        # manifests with "wav" and "duration" null; train text models: --train_opts "--modality=text"

help_message="Usage: $0 --config CONF --classes a,b,c --data_root DIR [--stage N] [--stop_stage M] [--folds 'f1 f2'] [--seeds '42 43'] [--train_opts '--key=value ...']"

. ./path.sh
. utils/log.sh
log "$0 $*"
cmdline=$0  # this command, shell-quoted, recorded with each training run
for arg in "$@"; do
  if [[ ${arg} =~ ^[A-Za-z0-9_./=:,+@%-]+$ ]]; then cmdline+=" ${arg}"; else cmdline+=" '${arg//\'/\'\\\'\'}'"; fi
done
. utils/parse_options.sh

start=${SECONDS}
for required in config classes data_root; do
  if [ -z "${!required}" ]; then
    log "Error: --${required} is required"; exit 1
  fi
done
[ -n "${tag}" ] || tag=$(basename "${config}" .yaml)
case "${text_only}" in
  true) text_only_data_opts="--text_only true" ;;
  false) text_only_data_opts= ;;
  *) log "Error: --text_only must be true or false, got '${text_only}'"; exit 1 ;;
esac
if [ "${text_only}" = true ] && [ -n "${asr_model}" ]; then
  log "Error: --asr_model transcribes audio, and a --text_only true run has none"; exit 1
fi
device=cpu
[ "${ngpu}" -gt 0 ] && device=cuda:0
train_launcher=(python)  # stage 4: one process, or torchrun with the DDP options below
train_device=${device}
train_desc=${device}     # how train_info.json records the device
ddp_opts=()
node_rank=0
if [ "${ngpu}" -gt 1 ] || [ "${nproc}" -gt 1 ]; then
  if [ "${ngpu}" -gt 0 ] && [ "${nproc}" -gt 1 ]; then
    log "Error: --nproc is for CPU training (--ngpu 0); with GPUs, --ngpu N trains with N processes"; exit 1
  fi
  read -r -a launch_opts <<< "${torchrun_opts:---standalone}"
  if [[ " ${torchrun_opts} " =~ [[:space:]]--node[_-]rank[=[:space:]]+([0-9]+) ]]; then node_rank=${BASH_REMATCH[1]}; fi
  if [ "${ngpu}" -gt 1 ]; then
    train_launcher=(python -m torch.distributed.run --nproc_per_node "${ngpu}" "${launch_opts[@]}")
    train_device=  # each process takes cuda:LOCAL_RANK
    train_desc="${ngpu} GPUs per node (DDP, nccl)"; ddp_opts=(--distributed_backend=nccl)
  else  # the cores shared among the processes
    threads=$(( ${OMP_NUM_THREADS:-$(nproc)} / nproc )); [ "${threads}" -ge 1 ] || threads=1
    train_launcher=(env OMP_NUM_THREADS="${threads}" python -m torch.distributed.run --nproc_per_node "${nproc}" "${launch_opts[@]}")
    train_desc="cpu, ${nproc} processes per node (DDP, gloo)"; ddp_opts=(--distributed_backend=gloo)
  fi
fi
read -r -a extra_opts <<< "${train_opts}"
read -r -a asr_extra <<< "${asr_opts}"
splits="train valid ${test_sets}"
if [ -z "${ablation_table}" ]; then
  ablation_table=conf/ablations.txt
  [ -f "${ablation_table}" ] || ablation_table=$(dirname "$(readlink -f "$0")")/conf/ablations.txt
fi
for name in ${ablations}; do  # unknown names stop here, before anything trains
  python -m crab.report overrides --table "${ablation_table}" --ablation "${name}" > /dev/null
done

run_opts() {  # overrides every training and evaluation run shares: fold $1, seed $2 (device $3: default ${device}, empty: none)
  local run_device=${3-${device}}
  echo --data_root="${data_root}" --data_folder="${data_dir}/$1" --seed="$2" --classes="[${classes}]" \
    --output_folder="${exp_dir}/${tag}/$1/seed$2" ${run_device:+--device="${run_device}"} \
    ${feature_cache:+--feature_cache="${feature_cache}"}
}

if [ ${stage} -le 0 ] && [ ${stop_stage} -ge 0 ] && [ -x local/corpus.sh ]; then
  if [ "${text_only}" = true ]; then
    log "Stage 0: skipped (--text_only true: no audio)"
  else
    log "Stage 0: corpus preparation (local/corpus.sh)"
    # shellcheck disable=SC2086
    local/corpus.sh --data_root "${data_root}" ${corpus_opts}
  fi
fi

if [ "${text_only}" = false ] && [ ! -d "${data_root}" ]; then
  log "Error: data_root '${data_root}' is not a directory: set the corpus location in db.sh (or pass --data_root)"
  exit 1
fi

if [ ${stage} -le 1 ] && [ ${stop_stage} -ge 1 ]; then
  log "Stage 1: data preparation (local/data.sh) into ${data_dir}"
  # shellcheck disable=SC2086
  local/data.sh --data_dir "${data_dir}" --data_root "${data_root}" ${text_only_data_opts} ${data_opts}
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
        --text_source "${text_source}" --text_only "${text_only}" --out "${data_dir}/${fold}/${split}.json"
    done
    if [ "${bpe_vocab_size}" -gt 0 ]; then
      python -m crab.tokenizer --manifest "${data_dir}/${fold}/train.json" \
        --out_dir "${data_dir}/${fold}/tokenizer" --vocab_size "${bpe_vocab_size}"
    fi
    if [ -n "${feature_cache}" ]; then
      log "Stage 3: frozen-encoder states of fold ${fold} into ${feature_cache} (re-running extracts only what is missing)"
      manifests=(); for split in ${splits}; do manifests+=("${data_dir}/${fold}/${split}.json"); done
      read -r first_seed _ <<< "${seeds}"
      # The yaml's checkpointer makes its folder on load: exp/extract_features/<fold>, not a run's.
      # shellcheck disable=SC2046
      python -m crab.bin.extract_features "${config}" $(run_opts "${fold}" "${first_seed}") \
        "${extra_opts[@]+"${extra_opts[@]}"}" --output_folder="${exp_dir}/extract_features/${fold}" \
        --manifests "${manifests[@]}"
    fi
  done
fi

# The experiments of stages 4-6: one named by --tag, or with --ablations one per name.
# A run spec is tag:NAME, ablation:NAME (its overrides from ${ablation_table}, then
# --train_opts) or alpha:VALUE (--train_opts, then --alpha=VALUE; tag alpha<VALUE>).
if [ -n "${ablations}" ]; then
  runs=(); for name in ${ablations}; do runs+=("ablation:${name}"); done
else
  runs=("tag:${tag}")
fi
main_tag=${tag}

set_run() {  # run spec $1 -> ${tag} and ${overrides[@]}
  local args=(-- "${extra_opts[@]+"${extra_opts[@]}"}") text
  case "$1" in
    ablation:*) tag=${1#ablation:}; args=(--table "${ablation_table}" --ablation "${tag}" "${args[@]}") ;;
    alpha:*) tag=alpha${1#alpha:}; args+=("--alpha=${1#alpha:}") ;;
    *) tag=${1#tag:} ;;
  esac
  text=$(python -m crab.report overrides "${args[@]}")
  overrides=()
  if [ -n "${text}" ]; then mapfile -t overrides <<< "${text}"; fi
}

train_runs() {  # stage 4 of run spec $1: every fold and seed
  set_run "$1"
  local fold seed out before t0
  for fold in ${folds}; do
    for seed in ${seeds}; do
      log "Stage 4: train ${tag}, fold ${fold}, seed ${seed} (re-running resumes)"
      out=${exp_dir}/${tag}/${fold}/seed${seed}
      before=0
      if [ -f "${out}/train_log.txt" ]; then before=$(wc -l < "${out}/train_log.txt"); fi
      t0=${SECONDS}
      # shellcheck disable=SC2046
      "${train_launcher[@]}" -m crab.bin.train "${config}" $(run_opts "${fold}" "${seed}" "${train_device}") \
        "${ddp_opts[@]+"${ddp_opts[@]}"}" "${overrides[@]+"${overrides[@]}"}"
      # epochs were trained; on several nodes, node 0 (the main process's) records them
      if [ "${node_rank}" = 0 ] && [ "$(wc -l < "${out}/train_log.txt")" != "${before}" ]; then
        python -m crab.report record_training --run_dir "${out}" --wall_s $((SECONDS - t0)) \
          --command "${cmdline}" --device "${train_desc}"
      fi
    done
  done
}

evaluate_runs() {  # stage 5 of run spec $1: every fold, seed and test set
  set_run "$1"
  local fold seed test_set tool
  local tools=(crab.bin.evaluate)
  if [ "${embeddings}" = true ]; then tools+=(crab.bin.embeddings); fi
  for fold in ${folds}; do
    for seed in ${seeds}; do
      for test_set in ${test_sets}; do
        log "Stage 5: evaluate ${tag}, fold ${fold}, seed ${seed} on ${test_set} (${tools[*]})"
        for tool in "${tools[@]}"; do
          # shellcheck disable=SC2046
          python -m "${tool}" "${config}" $(run_opts "${fold}" "${seed}") \
            --test_manifest="${data_dir}/${fold}/${test_set}.json" --eval_name="${test_set}" \
            "${overrides[@]+"${overrides[@]}"}"
        done
      done
    done
  done
}

score_runs() {  # stage 6 of run spec $1: per-run reports, results over folds and seeds
  set_run "$1"
  local fold seed test_set preds
  for test_set in ${test_sets}; do
    log "Stage 6: results of ${tag} on ${test_set} over folds (${folds}) and seeds (${seeds})"
    preds=()
    for fold in ${folds}; do
      for seed in ${seeds}; do
        preds+=("${exp_dir}/${tag}/${fold}/seed${seed}/eval_${test_set}/predictions.csv")
      done
    done
    python -m crab.bin.score --per_run --tag "${tag}" --test_set "${test_set}" \
      --title "${tag} on ${test_set}" --out "${exp_dir}/${tag}/results_${test_set}.md" \
      --summary "${exp_dir}/${tag}/results_${test_set}.json" "${preds[@]}"
  done
}

first_run_dump() {  # name=path of the embeddings of ablation $1, first fold and seed, on test set $2
  local fold seed
  read -r fold _ <<< "${folds}"; read -r seed _ <<< "${seeds}"
  echo "$1=${exp_dir}/$1/${fold}/seed${seed}/eval_$2/embeddings.npz"
}

if [ ${stage} -le 4 ] && [ ${stop_stage} -ge 4 ]; then
  for run in "${runs[@]}"; do train_runs "${run}"; done
fi

if [ ${stage} -le 5 ] && [ ${stop_stage} -ge 5 ]; then
  for run in "${runs[@]}"; do evaluate_runs "${run}"; done
fi

if [ ${stage} -le 6 ] && [ ${stop_stage} -ge 6 ]; then
  for run in "${runs[@]}"; do score_runs "${run}"; done
  for test_set in ${test_sets}; do
    if [ -z "${ablations}" ]; then break; fi
    log "Stage 6: ablation table on ${test_set}: ${exp_dir}/ablations_${test_set}.md"
    summaries=(); dumps=()
    for name in ${ablations}; do
      summaries+=("${exp_dir}/${name}/results_${test_set}.json")
      dumps+=("$(first_run_dump "${name}" "${test_set}")")
    done
    python -m crab.bin.compare table --ablation_table "${ablation_table}" \
      --title "Ablations on ${test_set} (${config}; folds: ${folds}; seeds: ${seeds}${train_opts:+; ${train_opts}})" \
      --out "${exp_dir}/ablations_${test_set}.md" "${summaries[@]}"
    if [ "${embeddings}" = true ]; then  # first fold and seed of each ablation
      python -m crab.bin.compare embeddings --plot "${exp_dir}/ablations_${test_set}_embeddings.png" \
        --out "${exp_dir}/ablations_${test_set}_embeddings.md" "${dumps[@]}"
    fi
  done
fi
tag=${main_tag}

if [ ${stage} -le 7 ] && [ ${stop_stage} -ge 7 ]; then
  for run in "${runs[@]}"; do
    set_run "${run}"
    for fold in ${folds}; do
      for seed in ${seeds}; do
        log "Stage 7: package ${tag}, fold ${fold}, seed ${seed} into ${exp_dir}/${tag}/${fold}/seed${seed}/model"
        # shellcheck disable=SC2046
        python -m crab.bin.package "${config}" $(run_opts "${fold}" "${seed}") \
          "${overrides[@]+"${overrides[@]}"}" --text_source "${text_source}" --asr_model "${asr_model}" \
          --out "${exp_dir}/${tag}/${fold}/seed${seed}/model"
      done
    done
  done
  tag=${main_tag}
fi

if [ ${stage} -le 8 ] && [ ${stop_stage} -ge 8 ] && [ -n "${alphas}" ]; then
  log "Stage 8: alpha sweep over ${alphas} (stages 4-6 for each, and for ce_only)"
  sweep=("ablation:ce_only"); for a in ${alphas}; do sweep+=("alpha:${a}"); done
  for run in "${sweep[@]}"; do
    train_runs "${run}"; evaluate_runs "${run}"; score_runs "${run}"
  done
  tag=${main_tag}
  for test_set in ${test_sets}; do
    log "Stage 8: ${exp_dir}/alpha_${test_set}.png and .md"
    summaries=(); for a in ${alphas}; do summaries+=("${exp_dir}/alpha${a}/results_${test_set}.json"); done
    python -m crab.bin.compare alpha --baseline "${exp_dir}/ce_only/results_${test_set}.json" \
      --title "UAR and WAR against alpha on ${test_set} (${config}; folds: ${folds}; seeds: ${seeds}${train_opts:+; ${train_opts}})" \
      --plot "${exp_dir}/alpha_${test_set}.png" --out "${exp_dir}/alpha_${test_set}.md" "${summaries[@]}"
  done
fi

log "Finished in $((SECONDS - start)) s"
