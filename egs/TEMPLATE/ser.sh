#!/usr/bin/env bash
# Shared stages of every Crab recipe (linked from egs/<corpus>/ser.sh): one experiment,
# from the corpus to a packaged model. A recipe's run.sh sets its fixed options and
# calls this script; the corpus-specific parts live in the recipe's local/: corpus.sh
# (optional: build or extract the audio), data.sh (Kaldi-style data/<fold>/<split>/).
# Ablations and the alpha sweep run this pipeline once per setting: sweep.sh. A setting
# worth keeping is a committed tuning file, conf/tuning/<name>.yaml (its base config and
# overrides): --tuning conf/tuning/<name>.yaml trains it as exp/<name>/.
#
#   0  corpus    local/corpus.sh --data_root DIR ${corpus_opts} (skipped when absent)
#   1  data      local/data.sh --data_dir DIR --data_root DIR ${data_opts}
#   2  asr       ASR transcripts (text.asr) into each data dir (only with --asr_model)
#   3  manifests data/<fold>/<split>.json, checked, with per-class counts; with
#                --bpe_vocab_size, a BPE tokenizer data/<fold>/tokenizer (tiny configs)
#   4  features  with --feature_cache DIR: the frozen encoders' states of every split
#                (sharded, resumable, shared by folds and by the settings of a sweep)
#   5  train     one run per fold and seed, exp/<tag>/<fold>/seed<seed>/ (its
#                hyperparams.yaml is what stages 6-8 use); with --ngpu N > 1 (or
#                --nproc N > 1 on CPU) N DDP processes (torchrun)
#   6  evaluate  best checkpoint on each test set (--embeddings true: also the fused
#                test embeddings and their cluster scores); an evaluation of the same
#                checkpoint and inputs is kept (--reevaluate true: done again)
#   7  score     per run: scores.json, per_class.md, confusion.png; per test set:
#                exp/<tag>/results_<test>.{md,json}, mean ± std over folds and seeds, and
#                an entry at the top of the recipe's RESULTS.md (--results_md); folds and
#                seeds that leave out runs of exp/<tag>/ evaluated on the test set (a subset)
#                go to exp/<tag>/results_<test>.<folds>.seed<seeds>.{md,json} instead
#   8  package   each fold and seed as a self-contained inference model
#                exp/<tag>/<fold>/seed<seed>/model (crab-infer, CrabClassifier)
#
# With --nj N > 1 or --cmd, stages 2 and 4-6 run as jobs (utils/jobs.sh): each job is this
# script for its stage and (5, 6) one fold and seed, N at once, here on GPUs of its own
# or through a scheduler (--cmd "utils/slurm.sh ..." or "utils/sge.sh ..."), logged to exp/<tag>/log/.
case ${BASH_VERSION:-} in 4.[4-9]* | [5-9].* | [1-9][0-9].*) ;; *) echo "$0 needs bash 4.4 or newer${BASH_VERSION:+ (this is bash ${BASH_VERSION})}: run it as bash $0" >&2; exit 1 ;; esac
set -euo pipefail

# ---- options: name=default  # description (--help prints this block) ----
stage=0                 # first stage to run
stop_stage=100          # last stage to run
data_dir=data           # data dirs and manifests
exp_dir=exp             # experiments
config=                 # hyperparameters (yaml), required unless --tuning names it (a relative path: in the recipe, else where you run the command)
tuning=                 # conf/tuning/<name>.yaml: a committed setting, its base config and overrides (before --ablation's and --train_opts)
tag=                    # experiment name under exp_dir (default: the tuning file's name, _<ablation> added with one; else the ablation's; else the config's)
folds=main              # space-separated fold names: data/<fold>/ for each
seeds=42                # space-separated seeds, each once (integers from 0 to 4294967295)
test_sets="test"        # space-separated test split names
classes=                # comma-separated labels in the config's order, required
data_root=              # the corpus audio, written as {data_root} in manifests, required; relative: from where you ran the command
data_root_var=          # the db.sh variable that sets data_root, named in errors (set by run.sh)
corpus_opts=            # options for local/corpus.sh (stage 0; shell words: quote values with spaces)
data_opts=              # options for local/data.sh (stage 1; shell words: quote values with spaces)
policy=error            # bad utterances at stage 3: error (stop) | skip (count, leave out, list in data/<fold>/<split>.json.skipped)
asr_model=              # stage 2: Hugging Face ASR model (hub id or directory); empty: no stage 2
asr_opts=               # extra options for crab.bin.transcribe (shell words: quote values with spaces)
text_source=gold        # manifests' text: gold (data dir's text) | asr (text.asr from stage 2)
bpe_vocab_size=0        # > 0: build data/<fold>/tokenizer at stage 3 (tiny configs)
ablation=               # one row of the ablation table: its overrides come before --train_opts
ablation_table=         # ablation name -> yaml overrides (default: conf/ablations.txt, else the TEMPLATE's)
train_opts=             # --key=value overrides of the yaml (shell words: quote values with spaces), and
                        # SpeechBrain's run options (--precision=bf16; flags: --compile, --noprogressbar)
ngpu=0                  # 0: CPU; 1: cuda:0; N > 1: stage 5 trains on N GPUs (DDP, nccl), later stages on cuda:0
nproc=1                 # with --ngpu 0, N > 1: stage 5 trains with N CPU processes (DDP, gloo)
torchrun_opts=          # torchrun options of a DDP stage 5 (empty: one node, --standalone; shell words: quote values
                        # with spaces); for 2 nodes, on each (exp_dir shared):
                        # "--nnodes 2 --node_rank 0 --master_addr HOST --master_port 29500"
nj=1                    # stages 2, 4-6 as jobs, at most N at once (5, 6: one per fold and seed; 2, 4: one, the folds
                        # share the transcripts, the cache), each logged to exp/<tag>/log/; here, on --ngpu GPUs each
cmd=                    # stages 2, 4-6 as jobs, each through this launcher: "utils/slurm.sh [options]" on Slurm,
                        # e.g. "utils/slurm.sh --partition gpu --time 1-00:00:00", "utils/sge.sh [options]" on
                        # Grid Engine; empty: in this shell
embeddings=false        # stage 6: also dump and score the fused (fc1) test embeddings (true | false)
reevaluate=false        # stage 6: true evaluates again what is current (false keeps an evaluation of the same
                        # checkpoint, test manifest, data_root, precision, device type, cached states and code)
feature_cache=          # frozen-encoder states (stage 4 extracts, stages 5-8 read); needs frozen encoders,
                        # --train_opts "--freeze_speech_encoder=true --freeze_text_encoder=true" (or the
                        # speech encoder's top layers fine-tuned: --finetune_top_speech_layers=K)
feature_opts=           # stage 4: options for crab.bin.extract_features (shell words): --dtype float16 (half
                        # the disk), --shard_size N (utterances per shard), --shard_mib M (a shard is written
                        # once its states, held in memory until then, reach M MiB; 1024), --batch_size N
text_only=false         # true: no audio (text-only baselines): stage 0 skipped, data_root need not exist,
                        # local/data.sh gets --text_only true, manifests without audio (--train_opts "--modality=text")
results_md=RESULTS.md   # stage 7 adds an entry per test set at the top of this file (relative: in the recipe dir);
                        # empty: none. The environment variable CRAB_RESULTS_MD, when set, replaces the default
# ---- end of options ----

usage() {  # the header above and every option of the block with its default
  local self
  self=$(readlink -f "${BASH_SOURCE[0]}")
  local command=${CRAB_COMMAND:-$0}
  echo "Usage: ${command%% -*} [--option value ...]   (--option=value works too)"  # up to the first option: a quoted path has spaces
  echo
  sed -n '2,/^set -euo/{/^#/!d;s/^# \{0,1\}//;p}' "${self}"
  # shellcheck source=utils/log.sh
  . utils/log.sh
  echo
  echo "Options (default in brackets):"
  options_help "${self}" "^# ---- options" "^# ---- end of options"
  local given=() word
  for word in "$@"; do case "${word}" in --help|-h) ;; *) given+=("${word}") ;; esac; done
  [ "${#given[@]}" -eq 0 ] && return
  echo "This call's options, which replace the defaults above (the recipe's run.sh's, then yours):"
  echo "  $(quote_words "${given[@]}")"
}
case " $* " in *" --help "*|*" -h "*) usage "$@"; exit 0 ;; esac

. utils/log.sh
. utils/wait_on_term.sh  # SIGTERM: the stage's commands stop on their own, this script after them
_invocation=$(quote_words "$0" "$@")  # logged first: parse_options.sh consumes "$@"
_script_args=("$@")                   # a job of stages 2, 4-6 is this script with these options (--nj, --cmd)

# The --config given by the user, if any: run.sh passes the recipe's default first, so with
# --tuning a later one (called directly, without run.sh: any one) must be the tuning's config.
_args=("$@") _configs_given=0 _given_config=
for ((_i = 0; _i < ${#_args[@]}; _i++)); do
  case "${_args[_i]}" in
    --config=*) _configs_given=$((_configs_given + 1)) _given_config=${_args[_i]#--config=} ;;
    --config) _configs_given=$((_configs_given + 1)) _given_config=${_args[_i + 1]-} _i=$((_i + 1)) ;;
    --*=*) ;;
    --*) _i=$((_i + 1)) ;;  # every option takes a value
  esac
done
_defaults=0; [ -z "${CRAB_COMMAND:-}" ] || _defaults=1  # CRAB_COMMAND: called by run.sh
[ "${_configs_given}" -gt "${_defaults}" ] || _given_config=
unset _args _i _configs_given _defaults
if [ -n "${CRAB_RESULTS_MD+x}" ]; then results_md=${CRAB_RESULTS_MD}; fi  # tests: never the recipe's file

. utils/parse_options.sh
. utils/check_options.sh
check_int stage stop_stage ngpu nproc bpe_vocab_size nj
[ "${stage}" -le "${stop_stage}" ] || { echo "$0: --stage ${stage} comes after --stop_stage ${stop_stage}: no stage to run" >&2; exit 1; }
[ "${nj}" -ge 1 ] || { echo "$0: --nj must be at least 1" >&2; exit 1; }
check_bool embeddings text_only reevaluate
check_choice policy error skip
check_choice text_source gold asr
check_seeds seeds
check_distinct folds
if [ -z "${data_root}" ] && [ -n "${data_root_var}" ]; then
  echo "$0: ${data_root_var} is empty: set ${data_root_var} in db.sh (or export it) to the corpus directory" >&2; exit 1
fi
for required in classes data_root; do
  [ -n "${!required}" ] || { echo "$0: --${required} is required (./run.sh --help)" >&2; exit 1; }
done
[ -n "${config}${tuning}" ] || { echo "$0: --config or --tuning is required (./run.sh --help)" >&2; exit 1; }
resolve_user_path config tuning _given_config  # read in the recipe directory, else where the command ran
no_file() {  # OPTION PATH
  local where=""
  if [[ $2 != /* ]]; then
    where=" in ${PWD}"
    [ "${CRAB_USER_CWD:-${PWD}}" = "${PWD}" ] || where=" in ${PWD} or ${CRAB_USER_CWD}"
  fi
  echo "$0: --$1 $2: no such file${where}" >&2
  exit 1
}
if [ -n "${tuning}" ]; then
  [ -f "${tuning}" ] || no_file tuning "${tuning}"
else
  [ -f "${config}" ] || no_file config "${config}"
fi
if [ "${text_only}" = true ] && [ -n "${asr_model}" ]; then
  echo "$0: --asr_model transcribes audio, and a --text_only true run has none" >&2; exit 1
fi
if [ "${ngpu}" -gt 0 ] && [ "${nproc}" -gt 1 ]; then
  echo "$0: --nproc is for CPU training (--ngpu 0); with GPUs, --ngpu N trains with N processes" >&2; exit 1
fi
case "${data_root}" in /*) ;; *) data_root=${CRAB_USER_CWD:-${PWD}}/${data_root} ;; esac
if [ "${text_only}" = false ] && [ ! -d "${data_root}" ] && { [ "${stage}" -gt 0 ] || [ ! -x local/corpus.sh ]; }; then
  where=${data_root_var:+set ${data_root_var} in db.sh (or export it)}
  [ ! -x local/corpus.sh ] || where="stage 0 (local/corpus.sh) builds it${where:+; or }${where}"
  echo "$0: data_root ${data_root} is not a directory: ${where:-pass --data_root DIR}" >&2
  exit 1
fi

. ./path.sh
. utils/jobs.sh
if [ -n "${cmd}" ]; then jobs_launcher "${cmd}" > /dev/null || exit 1; fi  # before the first stage
shell_words() {  # shell_words ARRAY OPTION VALUE: VALUE, of --OPTION, as shell words (quotes honoured) into ARRAY
  local words
  words=$(python -c 'import shlex, sys; print(*shlex.split(sys.argv[1]), sep="\n")' "$3" 2>&1) ||
    { echo "$0: --$2 '$3': not shell words (${words##*: })" >&2; exit 1; }
  [ -z "${words}" ] || mapfile -t "$1" <<< "${words}"
}
# a quoted path with spaces stays one word: --data_opts "--labels '/My corpus/l.csv'"
corpus_words=() data_words=() asr_words=() feature_words=() launch_opts=()
shell_words corpus_words corpus_opts "${corpus_opts}"
shell_words data_words data_opts "${data_opts}"
shell_words asr_words asr_opts "${asr_opts}"
shell_words feature_words feature_opts "${feature_opts}"
shell_words launch_opts torchrun_opts "${torchrun_opts:---standalone}"
if [ -n "${tuning}" ]; then  # the base config of the tuning file (checked whole: one line on an error)
  tuning_config=$(python -m crab.report tuning "${tuning}")
  if [ -n "${_given_config}" ] && ! [ "${_given_config}" -ef "${tuning_config}" ]; then
    echo "$0: --config ${_given_config} contradicts --tuning ${tuning}, whose config is ${tuning_config}: leave --config out" >&2
    exit 1
  fi
  config=${tuning_config}
fi
log "${_invocation}"
start=${SECONDS}
# as the user typed it (run.sh exports it); a job of stages 2, 4-6 records the command that started it
command=${CRAB_JOB_COMMAND:-${CRAB_COMMAND:-${_invocation}}}

# The yaml overrides of this experiment: the tuning file's, the ablation's, then --train_opts
# (shell words); a later value of a key wins.
if [ -z "${ablation_table}" ]; then
  ablation_table=conf/ablations.txt
  [ -f "${ablation_table}" ] || ablation_table=$(dirname "$(readlink -f "$0")")/conf/ablations.txt
fi
overrides_text=$(python -m crab.report overrides --opts="${train_opts}" ${tuning:+--tuning "${tuning}"} \
  ${ablation:+--table "${ablation_table}" --ablation "${ablation}"})
overrides=()
if [ -n "${overrides_text}" ]; then mapfile -t overrides <<< "${overrides_text}"; fi
if [ -z "${tag}" ] && [ -n "${tuning}" ]; then
  tag=$(basename "${tuning}" .yaml)${ablation:+_${ablation}}
fi
[ -n "${tag}" ] || tag=${ablation:-$(basename "${config}" .yaml)}
# Stage 3 needs no transcript for a speech-only model.
modality=$(sed -n 's/^modality: *\([a-z]*\).*/\1/p' "${config}")
for override in "${overrides[@]+"${overrides[@]}"}"; do
  case "${override}" in --modality=*) modality=${override#--modality=} ;; esac
done

device=cpu
[ "${ngpu}" -gt 0 ] && device=cuda:0
train_launcher=(python)  # stage 5: one process, or torchrun with the DDP options below
train_device=${device}
train_desc=${device}     # how train_info.json records the device
ddp_opts=()
node_rank=0  # torchrun's --node_rank (or --node-rank), given as --NAME N or --NAME=N
for ((i = 0; i < ${#launch_opts[@]}; i++)); do
  case "${launch_opts[i]}" in
    --node[_-]rank=*) node_rank=${launch_opts[i]#*=} ;;
    --node[_-]rank) node_rank=${launch_opts[i + 1]-} ;;
  esac
done
[[ ${node_rank} =~ ^[0-9]+$ ]] || { echo "$0: --torchrun_opts: --node_rank '${node_rank}' is not a number" >&2; exit 1; }
node_rank=$((10#${node_rank}))
# Stopped (a time limit's SIGTERM, scancel), torchrun passes the signal to its processes and
# kills them TORCH_ELASTIC_SHUTDOWN_TIMEOUT seconds later (torch >= 2.12; 30 s by default, and
# always before): a training saving its step at the paper's size needs more.
shutdown_grace=TORCH_ELASTIC_SHUTDOWN_TIMEOUT=${TORCH_ELASTIC_SHUTDOWN_TIMEOUT:-300}
if [ "${ngpu}" -gt 1 ] || [ "${nproc}" -gt 1 ]; then
  if [ "${ngpu}" -gt 1 ]; then
    train_launcher=(env "${shutdown_grace}" python -m torch.distributed.run --nproc_per_node "${ngpu}" "${launch_opts[@]}")
    train_device=  # each process takes cuda:LOCAL_RANK
    train_desc="${ngpu} GPUs per node (DDP, nccl)"; ddp_opts=(--distributed_backend=nccl)
  else  # the cores shared among the processes
    threads=$(( ${OMP_NUM_THREADS:-$(nproc)} / nproc )); [ "${threads}" -ge 1 ] || threads=1
    train_launcher=(env OMP_NUM_THREADS="${threads}" "${shutdown_grace}" python -m torch.distributed.run --nproc_per_node "${nproc}" "${launch_opts[@]}")
    train_desc="cpu, ${nproc} processes per node (DDP, gloo)"; ddp_opts=(--distributed_backend=gloo)
  fi
fi
splits="train valid ${test_sets}"

# the labels as a YAML list of quoted strings: unquoted, YAML reads 0, 1.5, true or null as
# numbers, booleans or null, which no label of a data directory equals
sq="'"
classes_yaml=${classes//${sq}/${sq}${sq}}
classes_yaml="['${classes_yaml//,/${sq},${sq}}']"

run_opts() {  # sets the array opts: the options of every run of fold $1, seed $2 (device $3: default ${device}, empty: none)
  local run_device=${3-${device}}
  opts=(--data_root="${data_root}" --data_folder="${data_dir}/$1" --seed="$2" --classes="${classes_yaml}"
    --output_folder="${exp_dir}/${tag}/$1/seed$2")
  [ -z "${run_device}" ] || opts+=(--device="${run_device}")
  [ -z "${feature_cache}" ] || opts+=(--feature_cache="${feature_cache}")
}

# Stages 2, 4-6 as jobs (--nj > 1 or --cmd): each job is this script, with the options given
# here, for one stage and (stages 5, 6) one fold and seed, run by utils/jobs.sh.
as_jobs() { [ "${nj}" -gt 1 ] || [ -n "${cmd}" ]; }

stage_as_jobs() {  # stage_as_jobs S: stage S as jobs, one per run ("FOLD SEED") at stages 5 and 6, else one ("")
  job_stage=$1
  job_units=("")
  local unit fold_ seed_ names=()
  if [ "${job_stage}" -ge 5 ]; then
    job_units=()
    for fold_ in ${folds}; do for seed_ in ${seeds}; do job_units+=("${fold_} ${seed_}"); done; done
  fi
  for unit in "${job_units[@]}"; do
    read -r fold_ seed_ <<< "${unit}"
    names+=("stage${job_stage}${fold_:+.${fold_}.seed${seed_}}")
  done
  log "Stage ${job_stage}: ${#names[@]} job(s), at most ${nj} at once${cmd:+, each through ${cmd}}; their logs: ${exp_dir}/${tag}/log/"
  export CRAB_JOB_COMMAND=${command}
  if ! jobs_run "${nj}" "${cmd}" "${ngpu}" "${exp_dir}/${tag}/log" stage_job "${names[@]}"; then
    log "Error: stage ${job_stage} failed (the end of each failed job's log says why)"
    exit 1
  fi
}

stage_job() {  # job $1 of stage_as_jobs, into the array job
  local fold_ seed_
  read -r fold_ seed_ <<< "${job_units[$1]}"
  job=("$0" "${_script_args[@]}" --stage "${job_stage}" --stop_stage "${job_stage}" --nj 1 --cmd "")
  [ -z "${fold_}" ] || job+=(--folds "${fold_}" --seeds "${seed_}")
}

need_manifests() {  # stage $1 reads the manifests of stage 3 of the splits $2...
  local fold split stage_=$1
  shift
  for fold in ${folds}; do
    if [ ! -d "${data_dir}/${fold}" ]; then  # a fold name mistyped, when other folds are there
      local made
      made=$(find "${data_dir}" -mindepth 2 -maxdepth 2 -name "*.json" -printf '%h\n' 2>/dev/null \
        | xargs -r -d '\n' -n 1 basename | sort -u | tr '\n' ' ' || true)
      if [ -n "${made}" ]; then
        log "Error: no fold ${fold} in ${data_dir}; the folds with manifests there: ${made% } (--folds names them)"
        exit 1
      fi
    fi
    for split in "$@"; do
      if [ ! -f "${data_dir}/${fold}/${split}.json" ]; then
        log "Error: ${data_dir}/${fold}/${split}.json not found: stage ${stage_} reads the manifests of stage 3 (run --stage 3 first)"
        exit 1
      fi
    done
  done
}

need_trained() {  # stage $1 evaluates, scores or packages the runs of the folds and seeds: finished ones
  local fold seed runs=()
  for fold in ${folds}; do for seed in ${seeds}; do runs+=("${exp_dir}/${tag}/${fold}/seed${seed}"); done; done
  python -m crab.report check_trained --stage "$1" "${runs[@]}"
}

if [ "${stage}" -le 0 ] && [ "${stop_stage}" -ge 0 ]; then
  if [ ! -x local/corpus.sh ]; then
    log "Stage 0: nothing to do (this recipe has no local/corpus.sh: the corpus is read where it is)"
  elif [ "${text_only}" = true ]; then
    log "Stage 0: skipped (--text_only true: no audio)"
  else
    log "Stage 0: corpus preparation (local/corpus.sh)"
    local/corpus.sh --data_root "${data_root}" "${corpus_words[@]+"${corpus_words[@]}"}"
  fi
fi

if [ "${stage}" -le 1 ] && [ "${stop_stage}" -ge 1 ]; then
  log "Stage 1: data preparation (local/data.sh) into ${data_dir}"
  text_only_opts=(); [ "${text_only}" = false ] || text_only_opts=(--text_only true)
  local/data.sh --data_dir "${data_dir}" --data_root "${data_root}" "${text_only_opts[@]+"${text_only_opts[@]}"}" \
    "${data_words[@]+"${data_words[@]}"}"
fi

if [ "${stage}" -le 2 ] && [ "${stop_stage}" -ge 2 ] && [ -z "${asr_model}" ]; then
  log "Stage 2: skipped (no --asr_model: no ASR transcripts)"
elif [ "${stage}" -le 2 ] && [ "${stop_stage}" -ge 2 ]; then
  if as_jobs; then
    stage_as_jobs 2
  else
    log "Stage 2: ASR transcripts with ${asr_model} (an utterance in several folds is transcribed once)"
    transcribed=()
    for fold in ${folds}; do
      for split in ${splits}; do
        python -m crab.bin.transcribe --data_dir "${data_dir}/${fold}/${split}" \
          --model "${asr_model}" --device "${device}" "${asr_words[@]+"${asr_words[@]}"}" \
          --reuse "${transcribed[@]+"${transcribed[@]}"}"
        transcribed+=("${data_dir}/${fold}/${split}")
      done
    done
  fi
fi

if [ "${stage}" -le 3 ] && [ "${stop_stage}" -ge 3 ]; then
  log "Stage 3: checked manifests (policy: ${policy}, text: ${text_source}, modality: ${modality})"
  for fold in ${folds}; do
    failed=()  # every split of the fold is checked before stopping: one listing of its bad input
    header=true  # one count table per fold: the fold's name and the column names above its first row
    for split in ${splits}; do
      python -m crab.bin.make_manifest --data_dir "${data_dir}/${fold}/${split}" --fold "${fold}" \
        --data_root "${data_root}" --classes "${classes}" --policy "${policy}" --modality "${modality}" \
        --text_source "${text_source}" --text_only "${text_only}" --out "${data_dir}/${fold}/${split}.json" \
        --peak_cache "${data_dir}/audio_peaks.json" --table_header "${header}" && header=false ||
        failed+=("${fold}/${split}")
    done
    if [ "${#failed[@]}" -gt 0 ]; then
      echo "$0: stage 3: no manifest for ${failed[*]} (see above)" >&2; exit 1
    fi
    split_dirs=(); for split in ${splits}; do split_dirs+=("${data_dir}/${fold}/${split}"); done
    python -m crab.bin.check_fold --fold "${fold}" --text_only "${text_only}" "${split_dirs[@]}"
    if [ "${bpe_vocab_size}" -gt 0 ]; then  # also for a speech-only model: the fold's experiments share it
      python -m crab.tokenizer --manifest "${data_dir}/${fold}/train.json" \
        --out_dir "${data_dir}/${fold}/tokenizer" --vocab_size "${bpe_vocab_size}"
    fi
  done
fi

if [ "${stage}" -le 4 ] && [ "${stop_stage}" -ge 4 ] && [ -z "${feature_cache}" ]; then
  log "Stage 4: skipped (no --feature_cache: training runs the encoders)"
elif [ "${stage}" -le 4 ] && [ "${stop_stage}" -ge 4 ]; then
  # shellcheck disable=SC2086
  need_manifests 4 ${splits}
  read -r first_seed _ <<< "${seeds}"
  if as_jobs; then
    stage_as_jobs 4
  else
    for fold in ${folds}; do
      log "Stage 4: frozen-encoder states of fold ${fold} into ${feature_cache} (re-running extracts only what is missing)"
      manifests=(); for split in ${splits}; do manifests+=("${data_dir}/${fold}/${split}.json"); done
      # The yaml's checkpointer makes its folder on load: exp/extract_features/<fold>, not a run's.
      run_opts "${fold}" "${first_seed}"
      python -m crab.bin.extract_features "${config}" "${opts[@]}" \
        "${overrides[@]+"${overrides[@]}"}" --output_folder="${exp_dir}/extract_features/${fold}" \
        --manifests "${manifests[@]}" "${feature_words[@]+"${feature_words[@]}"}"
    done
  fi
fi

if [ "${stage}" -le 5 ] && [ "${stop_stage}" -ge 5 ]; then
  need_manifests 5 train valid
  if as_jobs; then
    stage_as_jobs 5
  else
    for fold in ${folds}; do
      for seed in ${seeds}; do
        log "Stage 5: train ${tag}, fold ${fold}, seed ${seed} (re-running resumes)"
        out=${exp_dir}/${tag}/${fold}/seed${seed}
        before=0
        if [ -f "${out}/train_log.txt" ]; then before=$(wc -l < "${out}/train_log.txt"); fi
        t0=${SECONDS}
        run_opts "${fold}" "${seed}" "${train_device}"
        "${train_launcher[@]}" -m crab.bin.train "${config}" "${opts[@]}" \
          "${ddp_opts[@]+"${ddp_opts[@]}"}" "${overrides[@]+"${overrides[@]}"}"
        # epochs were trained, or an interrupted invocation trained them and was not recorded;
        # on several nodes, node 0 (the main process's) records them
        trained_now=true; [ "$(wc -l < "${out}/train_log.txt")" != "${before}" ] || trained_now=false
        if [ "${node_rank}" = 0 ] && { [ "${trained_now}" = true ] || [ ! -f "${out}/train_info.json" ]; }; then
          python -m crab.report record_training --run_dir "${out}" --wall_s $((SECONDS - t0)) \
            --command "${command}" --device "${train_desc}" --config "${config}" --tuning "${tuning}" \
            --trained_now "${trained_now}"
        fi
      done
    done
  fi
fi

# Stages 6-8 rebuild each run from its own hyperparams.yaml (saved by stage 5); the
# overrides given again must agree with it.
if [ "${stage}" -ge 6 ] && [ "${stage}" -le 8 ] && [ ! -d "${exp_dir}/${tag}" ]; then
  # a later stage run alone: the tag comes from --tag, else from --config / --tuning's name
  others=
  for dir in "${exp_dir}"/*/; do [ ! -d "${dir}" ] || others+=" $(basename "${dir}")"; done
  log "Note: no runs in ${exp_dir}/${tag} (tag ${tag}, from --tag or the name of --config or --tuning)${others:+; ${exp_dir} holds:${others}}"
fi
# ... and need it finished: checked once, for the first of them that runs
if [ "${stage}" -le 8 ] && [ "${stop_stage}" -ge 6 ]; then need_trained $((stage > 6 ? stage : 6)); fi
if [ "${stage}" -le 6 ] && [ "${stop_stage}" -ge 6 ]; then
  tools=(crab.bin.evaluate); [ "${embeddings}" = false ] || tools+=(crab.bin.embeddings)
  current=(--skip_if_current); [ "${reevaluate}" = false ] || current=()
  # shellcheck disable=SC2086
  need_manifests 6 ${test_sets}
  if as_jobs; then
    stage_as_jobs 6
  else
    for fold in ${folds}; do
      for seed in ${seeds}; do
        for test_set in ${test_sets}; do
          log "Stage 6: evaluate ${tag}, fold ${fold}, seed ${seed} on ${test_set} (${tools[*]})"
          for tool in "${tools[@]}"; do
            run_opts "${fold}" "${seed}"
            python -m "${tool}" "${config}" "${opts[@]}" \
              --test_manifest="${data_dir}/${fold}/${test_set}.json" --eval_name="${test_set}" \
              "${current[@]+"${current[@]}"}" "${overrides[@]+"${overrides[@]}"}"
          done
        done
      done
    done
  fi
fi

if [ "${stage}" -le 7 ] && [ "${stop_stage}" -ge 7 ]; then
  runs=() run_folds=()
  for fold in ${folds}; do
    for seed in ${seeds}; do runs+=("${exp_dir}/${tag}/${fold}/seed${seed}") run_folds+=("${fold}"); done
  done
  # --train_opts given again must agree with the runs, as at stages 6 and 8: a table names them
  [ -z "${train_opts}" ] || python -m crab.report check_agree --opts="${train_opts}" "${runs[@]}"
  for test_set in ${test_sets}; do
    log "Stage 7: results of ${tag} on ${test_set} over folds (${folds}) and seeds (${seeds})"
    preds=() manifests=()  # each run's predictions, and the test manifest they must be of
    for i in "${!runs[@]}"; do
      preds+=("${runs[i]}/eval_${test_set}/predictions.csv")
      manifests+=("${data_dir}/${run_folds[i]}/${test_set}.json")
    done
    # a subset of the runs evaluated on the test set is named by its folds and seeds: it
    # never replaces the table of them all
    results=${exp_dir}/${tag}/$(python -m crab.report results_name --test_set "${test_set}" "${preds[@]}")
    [ "${results}" = "${exp_dir}/${tag}/results_${test_set}" ] ||
      log "Stage 7: folds (${folds}) and seeds (${seeds}) leave out runs of ${tag} evaluated on ${test_set}: a subset, into ${results}.{md,json}"
    python -m crab.bin.score --test_manifests "${manifests[@]}" --per_run --tag "${tag}" --test_set "${test_set}" \
      --title "${tag} on ${test_set}${tuning:+ (${tuning})}" --out "${results}.md" \
      --summary "${results}.json" "${preds[@]}"
    if [ -n "${results_md}" ]; then
      python -m crab.report add_results --results_md "${results_md}" --command "${command}" \
        --summary "${results}.json" --config "${config}" --tuning "${tuning}" \
        --device "${device}" --corpus "$(basename "${PWD}")"  # says whether it added an entry
    fi
  done
fi

if [ "${stage}" -le 8 ] && [ "${stop_stage}" -ge 8 ]; then
  for fold in ${folds}; do
    for seed in ${seeds}; do
      # the transcripts' source and ASR model come from the run's own record
      log "Stage 8: package ${tag}, fold ${fold}, seed ${seed} into ${exp_dir}/${tag}/${fold}/seed${seed}/model"
      run_opts "${fold}" "${seed}"
      python -m crab.bin.package "${config}" "${opts[@]}" \
        "${overrides[@]+"${overrides[@]}"}" --out "${exp_dir}/${tag}/${fold}/seed${seed}/model"
    done
  done
fi

log "Finished in $((SECONDS - start)) s"
