#!/usr/bin/env bash
# Ablations and the alpha sweep (paper Tables III/IV and Fig. 3): the recipe's run.sh
# once per setting (stages 5-7 by default: train, evaluate, score; run stages 0-4 once
# before), then one comparison table per test set. Linked from egs/<corpus>/sweep.sh.
#
#   ./sweep.sh --ablations "ce_only mlcs speech_only"    # exp/<name>/, exp/ablations_<test>.md
#   ./sweep.sh --ablations "ce_only mlcs" --embeddings true   # + fused-embedding scores and plots
#   ./sweep.sh --alphas "0.25 0.5 1.0 2.0"               # exp/alpha<a>/ and exp/ce_only/ (the baseline),
#                                                        # exp/alpha_<test>.{md,png}
#   ./sweep.sh --tunings "conf/tuning/a.yaml conf/tuning/b.yaml"   # exp/a/, exp/b/, in exp/ablations_<test>.md
#
# A table of another sweep there (other settings, runs or --train_opts) is renamed with its
# figures to <name>.<date written>.<ext>, not replaced; the same sweep again replaces its own.
# Options of its own (below); every other option goes to run.sh as it is, e.g.
# --seeds "1 2 3", --folds, --feature_cache, --ngpu, --nj, --cmd (not --tag or --ablation: each
# setting sets them). With --settings_nj N, N settings run at once, each logged to
# exp/<name>.sweep.log: through a scheduler
# (--cmd) all their jobs are submitted together; on GPUs here they would share them,
# so that needs --cmd (on CPU the cores are shared out).
case ${BASH_VERSION:-} in 4.[4-9]* | [5-9].* | [1-9][0-9].*) ;; *) echo "$0 needs bash 4.4 or newer${BASH_VERSION:+ (this is bash ${BASH_VERSION})}: run it as bash $0" >&2; exit 1 ;; esac
set -euo pipefail

# ---- options: name=default  # description ----
ablations=          # ablation names of the table, each an experiment exp/<name>/
alphas=             # alpha values, each an experiment exp/alpha<a>/ (with ce_only as the baseline)
tunings=            # tuning files (conf/tuning/<name>.yaml), each an experiment exp/<name>/, rows of the ablation table
ablation_table=     # ablation name -> yaml overrides (default: conf/ablations.txt, else the TEMPLATE's)
train_opts=         # overrides for every setting, after the tuning file's (they win on a clash); another value of an ablation's key is an error
exp_dir=exp         # experiments
stage=5             # first stage of each run
stop_stage=7        # last stage of each run (the tables need 7)
settings_nj=1       # settings at once (see above)
# ---- end of options ----

self=$(readlink -f "$0")  # before enter_recipe.sh changes into the recipe: $0 may be relative
. "$(dirname "$0")/utils/enter_recipe.sh"
own=" ablations alphas tunings ablation_table train_opts exp_dir stage stop_stage settings_nj "
forward=()  # run.sh options: each takes a value
while [ $# -gt 0 ]; do
  case "$1" in
    --help|-h)
      sed -n '2,/^set -euo/{/^#/!d;s/^# \{0,1\}//;p}' "${self}"
      # shellcheck source=utils/log.sh
      . utils/log.sh
      printf '\nOptions (default in brackets):\n'
      options_help "${self}" "^# ---- options" "^# ---- end of options"
      echo "run.sh options: ./run.sh --help"; exit 0 ;;
    --*=*) name=${1%%=*}; value=${1#*=}; spaced=; shift ;;
    --*) [ $# -ge 2 ] || { echo "$0: option $1 needs a value" >&2; exit 1; }
         name=$1; value=$2; spaced=1; shift 2 ;;
    *) echo "$0: unexpected argument '$1' (options are --name value)" >&2; exit 1 ;;
  esac
  name=${name#--}; name=${name//-/_}
  if [ -n "${spaced}" ] && [ "${name}" != train_opts ] && [[ ${own} == *" ${name} "* && ${value} =~ ^--[A-Za-z_][A-Za-z0-9_-]*$ ]]; then
    echo "$0: option --${name} needs a value: it is followed by the option ${value}" >&2; exit 1
  fi
  if [[ ${own} == *" ${name} "* ]]; then printf -v "${name}" '%s' "${value}"; else forward+=("--${name}" "${value}"); fi
done
. utils/check_options.sh
check_int stage stop_stage settings_nj
[ "${settings_nj}" -ge 1 ] || { echo "$0: --settings_nj must be at least 1" >&2; exit 1; }
given() {  # the last value of run.sh option --$1 among those forwarded, else $2
  local i value=$2
  for ((i = 0; i < ${#forward[@]}; i += 2)); do [ "${forward[i]}" != "--$1" ] || value=${forward[i + 1]}; done
  echo "${value}"
}
for name in tag ablation; do  # each setting's own: run.sh would take the setting's, or this one for some settings only
  if [ -n "$(given "${name}" '')" ]; then
    echo "$0: --${name} is not a sweep's: each setting is its own experiment, exp/<name>/ with its ablation (--exp_dir puts them elsewhere; --ablations, --alphas, --train_opts say what they train)" >&2
    exit 1
  fi
done
if [ "${settings_nj}" -gt 1 ] && [ "$(given ngpu 0)" != 0 ] && [ -z "$(given cmd '')" ]; then
  echo "$0: --settings_nj ${settings_nj} with --ngpu here: the settings would share the GPUs; give --cmd (a scheduler), or run them one at a time" >&2
  exit 1
fi
if [ -z "${ablations}${alphas}${tunings}" ]; then
  echo "$0: give --ablations \"name ...\", --tunings \"conf/tuning/<name>.yaml ...\" and/or --alphas \"value ...\" (./sweep.sh --help)" >&2
  exit 1
fi
seen=" "  # each setting once, each alpha a plain number (its experiment is exp/alpha<a>/), before anything trains
for name in ${ablations}; do
  [[ ${seen} != *" ${name} "* ]] || { echo "$0: --ablations names ${name} twice" >&2; exit 1; }
  seen+="${name} "
done
seen=" "
for a in ${alphas}; do
  if ! [[ ${a} =~ ^([0-9]+\.?[0-9]*|\.[0-9]+)$ ]]; then
    echo "$0: --alphas: '${a}' is not a number of the form 0.5 or 2 (alpha >= 0)" >&2; exit 1
  fi
  # written one way (2.0, 2 and 02 are 2; .50 is 0.5): one experiment exp/alpha<a>/ whichever is given
  value=$(sed -E 's/^0+([0-9])/\1/; s/^\./0./; /\./s/0+$//; s/\.$//' <<< "${a}")
  [[ ${seen} != *" ${value} "* ]] || { echo "$0: --alphas gives alpha ${value} twice (${alphas})" >&2; exit 1; }
  seen+="${value} "
done
alphas=${seen# }; alphas=${alphas% }
. ./path.sh
. utils/log.sh
log "${CRAB_COMMAND}"
if [ -z "${ablation_table}" ]; then
  ablation_table=conf/ablations.txt
  [ -f "${ablation_table}" ] || ablation_table=$(dirname "${self}")/conf/ablations.txt
fi
given_opts=$(python -m crab.report overrides --opts="${train_opts}")  # bad --train_opts stop here
if [ -n "${alphas}" ] && grep -q '^--alpha=' <<< "${given_opts}"; then  # each alpha setting's own
  echo "$0: --train_opts gives $(grep '^--alpha=' <<< "${given_opts}" | tail -n 1), and --alphas sets alpha per setting: it would apply to none of them (each setting's --alpha wins) while the tables' titles name it; leave --alpha out of --train_opts" >&2
  exit 1
fi
for name in ${ablations} ${alphas:+ce_only}; do  # unknown names, and --train_opts undoing one, stop here
  python -m crab.report overrides --table "${ablation_table}" --ablation "${name}" \
    --opts="${train_opts}" --keep_ablation > /dev/null
done
tuned=()  # experiment names of the tuning files (a bad file stops here too)
alpha_names=(${alphas:+ce_only}); for a in ${alphas}; do alpha_names+=("alpha${a}"); done
for file in ${tunings}; do
  python -m crab.report tuning "${file}" > /dev/null
  name=$(basename "${file}" .yaml)
  if [[ " ${ablations} ${alpha_names[*]-} ${tuned[*]-} " == *" ${name} "* ]]; then
    echo "$0: two settings are named ${name} (exp/${name}/): rename the tuning file ${file}" >&2; exit 1
  fi
  tuned+=("${name}")
done

mkdir -p "${exp_dir}"  # the summaries this sweep's stage 7 writes are not older (the file system's clock)
stamp=$(mktemp "${exp_dir}/.sweep.XXXXXX") && started=$(stat -c %Y "${stamp}") && rm -f "${stamp}"

run() {  # run.sh for one setting: run.sh options in "$@"
  ./run.sh --stage "${stage}" --stop_stage "${stop_stage}" --exp_dir "${exp_dir}" \
    --ablation_table "${ablation_table}" "${forward[@]+"${forward[@]}"}" "$@"
}
setting() {  # setting NAME RUN.SH-OPTIONS...: one after the other, or --settings_nj at once
  local name=$1
  shift
  if [ "${settings_nj}" -eq 1 ]; then
    log "Setting ${name}"
    run "$@"
  else
    mkdir -p "${exp_dir}"
    log "Setting ${name}: ${exp_dir}/${name}.sweep.log"
    parallel_run "${exp_dir}/${name}.sweep.log" run "$@"
  fi
}
[ "${settings_nj}" -eq 1 ] || { . utils/parallel.sh; parallel_init "${settings_nj}"; }
runs=()
for name in ${ablations}; do runs+=("${name}"); done
if [ -n "${alphas}" ] && [[ " ${ablations} " != *" ce_only "* ]]; then runs+=(ce_only); fi
for name in "${runs[@]}"; do
  setting "${name}" --ablation "${name}" --tag "${name}" --train_opts "${train_opts}"
done
for file in ${tunings}; do
  name=$(basename "${file}" .yaml)
  setting "${name}" --tuning "${file}" --tag "${name}" --train_opts "${train_opts}"
done
for a in ${alphas}; do
  setting "alpha${a}" --tag "alpha${a}" --train_opts "${train_opts} --alpha=${a}"
done
if [ "${settings_nj}" -gt 1 ] && ! parallel_wait; then
  log "Error: a setting failed (the end of its .sweep.log says why)"
  exit 1
fi

[ "${stop_stage}" -ge 7 ] || exit 0
settings="${ablations} ${tuned[*]-}"  # the rows of the ablation table
read -r first _ <<< "${settings}"
first=${first:-alpha${alphas%% *}}
scored() {  # the summary of experiment $1 on test set $2 that stage 7 wrote last: of the folds
  # and seeds of this sweep, also when they are a subset of the experiment's runs
  python -m crab.report latest_results "${exp_dir}/$1" "$2"
}
# the test sets this sweep scored: of the first setting's summaries, those written since it started
test_sets=$(python -m crab.report test_sets --since "${started}" "${exp_dir}/${first}")
# The tables' titles name train_opts; crab.bin.compare adds the config, folds and seeds of the runs.
about="${train_opts:+; ${train_opts}}"
for test_set in ${test_sets}; do
  if [ -n "${settings// /}" ]; then
    log "Ablation table on ${test_set}: ${exp_dir}/ablations_${test_set}.md"
    summaries=(); dumps=()
    for name in ${settings}; do
      summaries+=("$(scored "${name}" "${test_set}")")
      dump=$(python -m crab.report embeddings "${summaries[-1]}")  # of a run the table scores
      [ -z "${dump}" ] || dumps+=("${name}=${dump}")
    done
    # a table of another sweep there is renamed with its embedding plot, not replaced
    python -m crab.bin.compare table --ablation_table "${ablation_table}" \
      --corpus "$(basename "${PWD}")" --test_set "${test_set}" --title "Ablations on ${test_set}${about}" --out "${exp_dir}/ablations_${test_set}.md" \
      --companions "${exp_dir}/ablations_${test_set}_embeddings.png" "${exp_dir}/ablations_${test_set}_embeddings.md" -- "${summaries[@]}"
    if [ "${#dumps[@]}" -eq "$(wc -w <<< "${settings}")" ]; then  # the first run of each with embeddings
      python -m crab.bin.compare embeddings --plot "${exp_dir}/ablations_${test_set}_embeddings.png" \
        --out "${exp_dir}/ablations_${test_set}_embeddings.md" "${dumps[@]}"
    else  # not those of an earlier sweep beside this table
      rm -f "${exp_dir}/ablations_${test_set}_embeddings.png" "${exp_dir}/ablations_${test_set}_embeddings.md"
    fi
  fi
  if [ -n "${alphas}" ]; then
    log "Alpha sweep on ${test_set}: ${exp_dir}/alpha_${test_set}.{md,png}"
    summaries=(); for a in ${alphas}; do summaries+=("$(scored "alpha${a}" "${test_set}")"); done
    python -m crab.bin.compare alpha --baseline "$(scored ce_only "${test_set}")" \
      --title "UAR and WAR against alpha on ${test_set}${about}" \
      --plot "${exp_dir}/alpha_${test_set}.png" --out "${exp_dir}/alpha_${test_set}.md" "${summaries[@]}"
  fi
done
