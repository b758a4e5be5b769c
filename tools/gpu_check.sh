#!/usr/bin/env bash
# GPU check of Crab: one script, run on a machine with a GPU after tools/install.sh;
# no network needed. Writes one summary (markdown) with each check's result, seconds
# and peak GPU memory, followed by the benchmark reports.
#
#   tools/gpu_check.sh                      # cuda: the default checks (*), meant to take under 8 minutes
#   tools/gpu_check.sh --checks all         # every check (PERFORMANCE.md: times on one H200)
#   tools/gpu_check.sh --device cpu --quick # the same steps on CPU, tiny: a dry run
#
# Checks (--checks a,b,... of these, default: those marked *; or all):
# * env         nvidia-smi, torch and CUDA versions, the GPUs torch sees
# * data        the mini recipe's stages 0-3 on CPU, only when its manifests are missing
# * train_fp32  mini recipe stages 5-8 (train, evaluate, score, package) on cuda:0; stage 7's
#               results entry goes to RESULTS.md in the work folder, never the recipe's
# * train_bf16  stage 5 with SpeechBrain's --precision=bf16 (through --train_opts)
# * train_fp16  stage 5 with --precision=fp16 (gradient scaler; CUDA only)
#   train_compile stage 5 with --compile --compile_using_dynamic_shape_tracing (bf16 on
#               CUDA): fails where torch.compile hit its recompile limit (dynamo gave up
#               on a function, which ran eagerly from then on); compare with train_bf16;
#               skipped, with the reason, where the compiler torch.compile needs is missing
#               (Triton's C compiler on CUDA, a C++ compiler on CPU; so are the compiled benchmarks)
#   cached      stages 4-6 with frozen encoders: the feature cache extracted on the device
# * ddp         stage 5 under torchrun, nccl: run.sh --ngpu N with N > 1 GPUs, one
#               process through torch.distributed.run with one (gloo on CPU); fails if
#               torch warns that destroy_process_group() was never called
#   jobs        stages 5-6 of two seeds as jobs, --nj 2: on CUDA with 2 or more GPUs, a GPU
#               each (their start lines must name different ones; skipped with one GPU),
#               on CPU two processes
# * bench_base  crab.bin.benchmark --size base --precision bf16 (MELD-like 2.5-3.5 s)
# * bench_large crab.bin.benchmark --size large --precision bf16, 8 x 12 s, steps only
#   bench_large_infer --size large bf16, 64 x 3 s, inference only (--infer_only): the rate
#   bench_large_fp32  8 x 12 s in fp32 with TF32, steps only (--steps_only)
#   bench_large_32    --size large bf16, 32 x 12 s, --gradient_checkpointing, steps only
#   bench_large_compile --size large bf16, 8 x 12 s, the steps through torch.compile
#   bench_large_cudagraphs  the same with --compile_mode reduce-overhead (CUDA graphs: the
#               step's kernels launched as graphs, not one by one)
# train_fp32 trains 3 epochs, the other training checks 1. With --quick the benchmarks run
# --quick (tiny) and train_fp32 1 epoch.
# --budget_s S (default 1200) bounds the whole check: each check's own time limit is cut
# to what is left, and a check with under 20 s left is skipped (the large-size benchmarks,
# last, first).
# Where torch sees no GPU (--device cuda), the checks after env are skipped, saying so, and
# the check fails.
# --work DIR: where the runs, logs and summary go (default egs/mini/exp_gpu_check/<date>_<time>);
# --ngpu N: the GPUs the ddp check trains on, and the jobs check counts (default: all that torch sees).
case ${BASH_VERSION:-} in 4.[4-9]* | [5-9].* | [1-9][0-9].*) ;; *) echo "$0 needs bash 4.4 or newer${BASH_VERSION:+ (this is bash ${BASH_VERSION})}: run it as bash $0" >&2; exit 1 ;; esac
set -uo pipefail
unset CDPATH  # a relative cd goes here, never to a namesake on the user's CDPATH

device=cuda
quick=false
checks=default
# the default checks: the recipe trained on the GPU (fp32, bf16, fp16, DDP) and the benchmark
# at base and large size (training steps only at large size)
default_checks=env,data,train_fp32,train_bf16,train_fp16,ddp,bench_base,bench_large
known_checks="${default_checks},train_compile,cached,jobs,bench_large_infer,bench_large_fp32,bench_large_32,bench_large_compile,bench_large_cudagraphs"
work=
ngpu=
budget_s=1200

usage() { sed -n '2,/^set -uo/{/^#/!d;s/^# \{0,1\}//;p}' "$0"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --device) device=$2; shift 2 ;;
    --quick) quick=true; shift ;;
    --checks) checks=$2; shift 2 ;;
    --work) work=$2; shift 2 ;;
    --ngpu) ngpu=$2; shift 2 ;;
    --budget_s) budget_s=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "$0: unknown option $1 (--help)" >&2; exit 1 ;;
  esac
done
case "${device}" in cuda|cpu) ;; *) echo "$0: --device cuda|cpu, got ${device}" >&2; exit 1 ;; esac
[[ "${budget_s}" =~ ^[0-9]+$ ]] || { echo "$0: --budget_s takes whole seconds, got ${budget_s}" >&2; exit 1; }
[ -z "${ngpu}" ] || [[ "${ngpu}" =~ ^[1-9][0-9]*$ ]] || { echo "$0: --ngpu takes a GPU count, got ${ngpu}" >&2; exit 1; }
checks_given=${checks}  # for the summary
[ "${checks}" = default ] && checks=${default_checks}
if [ "${checks}" != all ]; then
  [ -n "${checks//,/}" ] || { echo "$0: --checks: no check named; the checks: all or ${known_checks}" >&2; exit 1; }
  for name in ${checks//,/ }; do
    [[ ",${known_checks}," == *",${name},"* ]] \
      || { echo "$0: --checks: no check '${name}'; the checks: all or ${known_checks}" >&2; exit 1; }
  done
fi
deadline=$((SECONDS + budget_s))

ROOT=$(cd "$(dirname "$0")/.." && pwd)
RECIPE=${ROOT}/egs/mini
if [ -x "${ROOT}/tools/venv/bin/python" ]; then export PATH="${ROOT}/tools/venv/bin:${PATH}"; fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1  # everything is local: configs, tokenizer, data
# this checkout's crab, also for the benchmarks, which do not go through the recipe's path.sh
# (the venv's editable install may be another checkout's)
export PYTHONPATH=${ROOT}${PYTHONPATH:+:${PYTHONPATH}}
stamp=$(date -u +%Y%m%d_%H%M%S)
work=${work:-${RECIPE}/exp_gpu_check/${stamp}}
mkdir -p "${work}/logs"
work=$(cd "${work}" && pwd)
summary=${work}/gpu_check_${stamp}.md
rows=()
reports=()

wanted() { [ "${checks}" = all ] || [[ ",${checks}," == *",$1,"* ]]; }

gpus_seen() { python -c "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)"; }

# run_check NAME TIMEOUT_S COMMAND...: runs it (output in logs/NAME.log), records the
# result, the seconds and, on CUDA, the peak memory used on the GPUs (nvidia-smi, 0.5 s samples)
run_check() {
  local name=$1 limit=$2; shift 2
  local log=${work}/logs/${name}.log sampler='' peak=- t0 rc status left=$((deadline - SECONDS)) cut=''
  if [ -n "${no_device}" ]; then skip "${name}" "${no_device}"; return 0; fi
  if [ "${left}" -lt 20 ]; then skip "${name}" "--budget_s ${budget_s} spent"; return 0; fi
  if [ "${left}" -lt "${limit}" ]; then limit=${left}; cut=", cut by --budget_s"; fi
  echo "== ${name}: $(printf '%s ' "$@" | head -c 300 | head -1)" | tee "${log}"
  if [ "${device}" = cuda ] && command -v nvidia-smi > /dev/null; then
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 500 > "${work}/logs/${name}.mem" 2>/dev/null &
    sampler=$!
  fi
  t0=$(date +%s.%N)
  timeout "${limit}" "$@" >> "${log}" 2>&1
  rc=$?
  local seconds
  seconds=$(python -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "${t0}" "$(date +%s.%N)")
  if [ -n "${sampler}" ]; then
    kill "${sampler}" 2>/dev/null; wait "${sampler}" 2>/dev/null
    peak=$(sort -n "${work}/logs/${name}.mem" | tail -1); peak=${peak:--}
  fi
  if [ "${rc}" = 0 ]; then status=pass; elif [ "${rc}" = 124 ]; then status="FAIL (timeout ${limit} s${cut})"; else status="FAIL (exit ${rc})"; fi
  if [ "${rc}" = 0 ] && grep -q "destroy_process_group() was never called" "${log}"; then
    status="FAIL (destroy_process_group() was never called)"
  fi
  if [ "${rc}" = 0 ] && grep -q "torch._dynamo hit config\." "${log}"; then
    status="FAIL (torch.compile hit its recompile limit)"
  fi
  echo "   ${status}, ${seconds} s, peak GPU memory ${peak} MiB" | tee -a "${log}"
  rows+=("| ${name} | ${status} | ${seconds} | ${peak} | logs/${name}.log |")
  return 0
}

skip() { rows+=("| $1 | skipped ($2) | - | - | - |"); echo "== $1: skipped ($2)"; }

env_report() {
  echo "date (UTC): $(date -u '+%Y-%m-%d %H:%M')"
  echo "host: $(uname -srm)"
  if command -v nvidia-smi > /dev/null; then
    nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv
  else
    echo "nvidia-smi: not found"
  fi
  python - "$1" <<'EOF'
import sys
import torch, transformers, speechbrain
import crab
print(f"crab: {crab.__path__[0]}")
print(f"python {sys.version.split()[0]}, torch {torch.__version__} (CUDA {torch.version.cuda}, cuDNN "
      f"{torch.backends.cudnn.version()}), transformers {transformers.__version__}, speechbrain {speechbrain.__version__}")
print(f"cuda available: {torch.cuda.is_available()}, devices: "
      + ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())))
from crab.compilers import compiler_for, compiler_missing
print(f"torch.compile: {compiler_missing(sys.argv[1]) or f'builds with {compiler_for(sys.argv[1])}'}")
if sys.argv[1] == "cuda" and not torch.cuda.is_available():
    from crab.devices import cuda_problem
    sys.exit(f"--device cuda: torch sees no GPU: {cuda_problem('cuda:0')}")
EOF
}

cd "${RECIPE}" || exit 1
classes=angry,happy,neutral,sad
# the recipe's run (train_fp32) trains 3 epochs, 1 with --quick; the other paths train one:
# what they check is that the path trains
if [ "${quick}" = true ]; then epochs=1; else epochs=3; fi
recipe_ngpu=1; [ "${device}" = cuda ] || recipe_ngpu=0
# stage 7 adds its entries to the work folder's RESULTS.md, never to the recipe's
# (--ngpu is each check's own: the ddp and jobs checks take other counts)
recipe=(./run.sh --exp_dir "${work}/exp" --results_md "${work}/RESULTS.md")

# without a GPU every check on CUDA would fail, one after the other: they are skipped (and
# the check fails)
no_device=''
if wanted env; then
  run_check env 120 bash -c "$(declare -f env_report); env_report ${device}"
  if grep -q "^--device cuda: torch sees no GPU" "${work}/logs/env.log"; then no_device="torch sees no GPU"; fi
elif [ "${device}" = cuda ] && [ "$(gpus_seen)" = 0 ]; then
  no_device="torch sees no GPU"
fi

if wanted data; then
  if [ -f data/main/train.json ] && [ -f data/main/valid.json ] && [ -f data/main/test.json ]; then
    skip data "data/main manifests present"
  else
    run_check data 900 ./run.sh --stage 0 --stop_stage 3
  fi
fi

if wanted train_fp32; then
  run_check train_fp32 900 "${recipe[@]}" --stage 5 --stop_stage 8 --ngpu "${recipe_ngpu}" --tag fp32 \
    --train_opts "--number_of_epochs=${epochs}"
fi
if wanted train_bf16; then
  run_check train_bf16 600 "${recipe[@]}" --stage 5 --stop_stage 5 --ngpu "${recipe_ngpu}" --tag bf16 \
    --train_opts "--number_of_epochs=1 --precision=bf16"
fi
if wanted train_fp16; then
  if [ "${device}" = cuda ]; then
    run_check train_fp16 600 "${recipe[@]}" --stage 5 --stop_stage 5 --ngpu "${recipe_ngpu}" --tag fp16 \
      --train_opts "--number_of_epochs=1 --precision=fp16"
  else
    skip train_fp16 "fp16 needs CUDA"
  fi
fi

# why torch.compile cannot build code on the device here (no compiler), or empty; asked once,
# by the first compiled check
compile_blocker=unknown
find_compile_blocker() {
  [ "${compile_blocker}" = unknown ] || return 0
  compile_blocker=$(python -c 'import sys; from crab.compilers import compiler_missing
print(compiler_missing(sys.argv[1]) or "")' "${device}")
}
if wanted train_compile; then
  find_compile_blocker
  if [ -n "${compile_blocker}" ]; then
    skip train_compile "${compile_blocker}"
  else
    precision=''; [ "${device}" = cuda ] && precision=' --precision=bf16'
    run_check train_compile 900 "${recipe[@]}" --stage 5 --stop_stage 5 --ngpu "${recipe_ngpu}" --tag compile \
      --train_opts "--number_of_epochs=1${precision} --compile --compile_using_dynamic_shape_tracing"
  fi
fi

if wanted cached; then
  run_check cached 600 "${recipe[@]}" --stage 4 --stop_stage 6 --ngpu "${recipe_ngpu}" --tag cached --feature_cache "${work}/cache" \
    --train_opts "--number_of_epochs=1 --freeze_speech_encoder=true --freeze_text_encoder=true"
fi

if wanted ddp; then
  if [ "${device}" = cuda ]; then
    n=${ngpu:-$(gpus_seen)}
  else
    n=1
  fi
  if [ "${device}" = cuda ] && [ "${n}" -gt 1 ]; then
    run_check "ddp_nccl_${n}" 900 "${recipe[@]}" --stage 5 --stop_stage 5 --ngpu "${n}" --tag "ddp${n}" \
      --train_opts "--number_of_epochs=1"
  else
    backend=nccl; device_opt=(); [ "${device}" = cuda ] || { backend=gloo; device_opt=(--device=cpu); }
    run_check "ddp_${backend}_1" 600 python -m torch.distributed.run --standalone --nproc_per_node 1 \
      -m crab.bin.train conf/crab_tiny.yaml --data_root="${RECIPE}/data/corpus" --data_folder=data/main \
      --seed=42 "--classes=[${classes}]" --output_folder="${work}/exp/ddp1/main/seed42" \
      --distributed_backend="${backend}" "${device_opt[@]}" --number_of_epochs=1
  fi
fi

if wanted jobs; then
  if [ "${device}" = cuda ] && [ "${ngpu:-$(gpus_seen)}" -lt 2 ]; then
    skip jobs "needs 2 GPUs (a GPU per job)"
  else
    jobs_gpus=0; [ "${device}" = cpu ] || jobs_gpus=1
    run_check jobs 600 "${recipe[@]}" --stage 5 --stop_stage 6 --ngpu "${jobs_gpus}" --nj 2 --seeds "1 2" \
      --tag jobs --train_opts "--number_of_epochs=1"
    if [ "${jobs_gpus}" = 1 ]; then  # the two jobs' start lines name two GPUs
      run_check jobs_two_gpus 10 bash -c \
        "[ \$(grep -o 'started on GPUs [^ ]*' '${work}/logs/jobs.log' | sort -u | wc -l) -ge 2 ]"
    fi
  fi
fi

bench() {  # bench NAME OPTIONS...: the benchmark on the device, its report kept for the summary
  local name=$1; shift
  run_check "${name}" 900 python -m crab.bin.benchmark --device "${device}" "$@"
  reports+=("${name}")
}
if [ "${quick}" = true ]; then
  if wanted bench_base; then bench bench_base --quick --precision bf16 --repeats 2; fi
else
  if wanted bench_base; then bench bench_base --size base --precision bf16 --epochs 1; fi
  if wanted bench_large; then
    bench bench_large --size large --precision bf16 --audio_seconds 12 --steps_only
  fi
  if wanted bench_large_infer; then  # the inference rate of 3 s utterances, at batch 64
    bench bench_large_infer --size large --precision bf16 --audio_seconds 3 --batch_size 64 --repeats 3 --infer_only
  fi
  if wanted bench_large_fp32; then
    bench bench_large_fp32 --size large --precision fp32 --tf32 true --audio_seconds 12 --steps_only
  fi
  if wanted bench_large_32; then
    bench bench_large_32 --size large --precision bf16 --audio_seconds 12 --batch_size 32 \
      --gradient_checkpointing --repeats 3 --steps_only
  fi
  compiled_bench() {  # compiled_bench NAME MODE: 8 x 12 s bf16 through torch.compile in MODE
    find_compile_blocker
    if [ -n "${compile_blocker}" ]; then skip "$1" "${compile_blocker}"; return 0; fi
    bench "$1" --size large --precision bf16 --audio_seconds 12 --compile --compile_mode "$2" --repeats 3
  }
  if wanted bench_large_compile; then compiled_bench bench_large_compile default; fi
  if wanted bench_large_cudagraphs; then compiled_bench bench_large_cudagraphs reduce-overhead; fi
fi

{
  echo "# Crab GPU check, $(date -u '+%Y-%m-%d %H:%M') UTC"
  echo
  echo "command: tools/gpu_check.sh --device ${device}$([ "${quick}" = true ] && echo " --quick") --checks ${checks_given} --budget_s ${budget_s}"
  echo "commit: $(git -C "${ROOT}" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "${ROOT}" diff --quiet 2>/dev/null || echo ' (with uncommitted changes)')"
  echo
  echo '```'
  sed -n '/^date (UTC)/,$p' "${work}/logs/env.log" 2>/dev/null | grep -v '^   \(pass\|FAIL\)'
  echo '```'
  echo
  echo "peak GPU memory: the most nvidia-smi showed in use on one GPU during the check (the busiest GPU; all processes, 0.5 s samples)"
  echo
  echo "| check | result | seconds | peak GPU memory MiB | log |"
  echo "|---|---|---|---|---|"
  printf '%s\n' "${rows[@]}"
  if [ -f "${work}/RESULTS.md" ]; then echo; echo "stage 7's results entries: RESULTS.md (this folder)"; fi
  for name in "${reports[@]+"${reports[@]}"}"; do
    echo
    echo "## ${name}"
    echo
    sed -n '/^# Crab benchmark/,$p' "${work}/logs/${name}.log" | grep -v '^   \(pass\|FAIL\)' | sed 's/^\(#\+\) /\1## /'
  done
} > "${summary}"
echo
echo "summary: ${summary}"
if [ -n "${no_device}" ] || printf '%s\n' "${rows[@]}" | grep -q "| FAIL"; then exit 1; fi
