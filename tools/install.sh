#!/usr/bin/env bash
# Create tools/venv with the pinned dependencies and the crab package (editable),
# and bring the system tools the recipes and tests call.
#
#   tools/install.sh [--torch auto|cpu|cuda|keep] [--dry_run] [--help]
#
# A second run checks and changes nothing. A venv moved or copied with the checkout
# (its scripts name the folder it was made in) is made again.
#
# System tools: ffmpeg (MELD recipe, mp4 -> wav), espeak-ng (mini recipe corpus), and
# the shell gate of tools/gates.sh, shellcheck, are installed with apt-get where we are
# root (apt-get update first if the install fails); elsewhere the log says how to install
# them by hand. So is pythonX.Y-venv where the python has no ensurepip (Debian, Ubuntu), which
# python -m venv needs.
#
# torch (--torch, or the environment variable CRAB_TORCH; default auto):
#   auto  keep a working torch >= 2.6 (CPU or CUDA build) found in the venv, or in
#         the system python when the venv does not exist yet (the venv is then made
#         with --system-site-packages); otherwise the CUDA build where an NVIDIA GPU
#         is present (nvidia-smi works or /proc/driver/nvidia/version exists), the
#         CPU build elsewhere.
#   cpu   the CPU build, torch==2.13.0+cpu (an existing CPU build >= 2.6 is kept):
#         first from the indexes / wheel folders pip is configured with, then from
#         PyTorch's CPU index https://download.pytorch.org/whl/cpu (where that index
#         cannot be reached, --torch cuda gets a torch from PyPI, which runs on the CPU too).
#   cuda  the CUDA build from PyPI, torch==X with torchaudio==X, X the torchaudio
#         pin of tools/requirements.txt (an existing working CUDA build is kept).
#   keep  keep the existing torch; an error if there is none.
# torchaudio: PyPI wheels are CUDA builds whose compiled extension cannot load
# against CPU torch; only where it fails to load are its torchaudio/lib/*.so
# removed, which leaves the pure-Python part SpeechBrain needs.
#
# --dry_run prints the decisions and the commands it would run ("+ " lines) and
# changes nothing. Other environment variables: CRAB_VENV (the venv, default
# tools/venv), PYTHON (the python that makes it, 3.11 or newer, default python3). For tests, the
# detection can be faked: CRAB_INSTALL_GPU=yes|no (NVIDIA GPU present),
# CRAB_INSTALL_TORCH_STATE=none|venv-cpu|venv-cuda|system-cpu|system-cuda[:VERSION]
# (the torch found, default version 2.13.0+cpu or the CUDA pin),
# CRAB_INSTALL_APT=yes|no (root with apt-get).
case ${BASH_VERSION:-} in 4.[4-9]* | [5-9].* | [1-9][0-9].*) ;; *) echo "$0 needs bash 4.4 or newer${BASH_VERSION:+ (this is bash ${BASH_VERSION})}: run it as bash $0" >&2; exit 1 ;; esac
set -euo pipefail
unset CDPATH  # a relative cd goes here, never to a namesake on the user's CDPATH

tools_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "${tools_dir}")
venv=${CRAB_VENV:-${tools_dir}/venv}
python=${PYTHON:-python3}
system_tools="ffmpeg espeak-ng shellcheck"
min_torch=2.6  # torch.load defaults to weights_only=True from 2.6 on
cpu_torch_version=2.13.0+cpu
cpu_index=https://download.pytorch.org/whl/cpu
cuda_torch_version=$(sed -n 's/^torchaudio==\([^ ]*\).*/\1/p' "${tools_dir}/requirements.txt")

log() { echo "$(date '+%Y-%m-%dT%H:%M:%S') (install.sh:${BASH_LINENO[0]}) $*"; }
die() { echo "install.sh: $*" >&2; exit 2; }
usage() { sed -n '2,/^set -euo/{/^#/!d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; }

torch_mode=${CRAB_TORCH:-auto}
torch_mode_from="CRAB_TORCH"
dry_run=false
while [ $# -gt 0 ]; do
  case "$1" in
    --torch) [ $# -ge 2 ] || die "--torch needs a value: auto, cpu, cuda or keep"
             torch_mode=$2; torch_mode_from="--torch"; shift 2 ;;
    --torch=*) torch_mode=${1#--torch=}; torch_mode_from="--torch"; shift ;;
    --dry_run) dry_run=true; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown option '$1' (see tools/install.sh --help)" ;;
  esac
done
# Said here, before a pip error on a torch build the platform does not have.
[ "$(uname -s)" = Linux ] || die "Crab runs on Linux only (the recipes use GNU coreutils and /proc)," \
  "and this is $(uname -s): macOS and Windows are not supported"
case "${torch_mode}" in
  auto|cpu|cuda|keep) ;;
  *) die "${torch_mode_from} must be auto, cpu, cuda or keep (got '${torch_mode}')" ;;
esac
[ -n "${cuda_torch_version}" ] || die "tools/requirements.txt has no torchaudio==VERSION pin"

# run CMD...: runs it, or under --dry_run prints it.
run() {
  if ${dry_run}; then echo "+ $*"; else "$@"; fi
}
# version_ok VERSION: is it at least min_torch?
version_ok() { [ "$(printf '%s\n' "${min_torch}" "${1%%+*}" | sort -V | head -n 1)" = "${min_torch}" ]; }

# ---- System tools -----------------------------------------------------------
if [ -n "${CRAB_INSTALL_APT:-}" ]; then
  case "${CRAB_INSTALL_APT}" in yes|no) can_apt=${CRAB_INSTALL_APT} ;; *) die "CRAB_INSTALL_APT must be yes or no" ;; esac
elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  can_apt=yes
else
  can_apt=no
fi
apt_updated=false
install_tool() {  # TOOL: apt-get install, with apt-get update first if that fails
  local cmd=(apt-get install -y -q --no-install-recommends "$1")
  if ${dry_run}; then
    echo "+ ${cmd[*]}"
    echo "+ (if that fails) apt-get update -q && ${cmd[*]}"
    return 0
  fi
  DEBIAN_FRONTEND=noninteractive "${cmd[@]}" >/dev/null && return 0
  ${apt_updated} && return 1
  log "apt-get install $1 failed: running apt-get update and trying again"
  apt_updated=true
  apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive "${cmd[@]}" >/dev/null
}
missing_tools=""
for tool in ${system_tools}; do
  if command -v "${tool}" >/dev/null 2>&1; then
    log "${tool}: already present ($(command -v "${tool}"))"
  elif [ "${can_apt}" = yes ]; then
    log "${tool}: missing, installing the Debian package ${tool}"
    if install_tool "${tool}" && { ${dry_run} || command -v "${tool}" >/dev/null 2>&1; }; then
      ${dry_run} || log "${tool}: installed ($(command -v "${tool}"))"
    else
      log "${tool}: could not install with apt-get; install it by hand: sudo apt-get install ${tool}"
      missing_tools="${missing_tools} ${tool}"
    fi
  else
    log "${tool}: not found and not installed (needs root and apt-get); install it by hand:" \
      "sudo apt-get install ${tool} (Debian/Ubuntu), brew install ${tool} (macOS)"
    missing_tools="${missing_tools} ${tool}"
  fi
done

# ---- Python ---------------------------------------------------------------------
# A venv holds its own path (activate's VIRTUAL_ENV, its scripts' #! lines, crab's editable
# link): one moved or copied with the checkout does not work here, so it is made again.
if [ -x "${venv}/bin/python" ] && [ -f "${venv}/bin/activate" ]; then
  # shellcheck disable=SC1091
  made_in=$(. "${venv}/bin/activate" > /dev/null 2>&1 && echo "${VIRTUAL_ENV:-}")
  if ! [ "${made_in}" -ef "${venv}" ]; then
    log "${venv} was made in ${made_in:-another folder} (moved or copied since), and a virtual environment does not move: making it again"
    run rm -rf "${venv}"
  fi
fi
# The pinned numpy and pandas need Python 3.11 or newer: say so before pip does, obscurely.
if [ -x "${venv}/bin/python" ]; then venv_python=${venv}/bin/python; else venv_python=${python}; fi
command -v "${venv_python}" > /dev/null \
  || die "no ${venv_python}: install Python 3.11 or newer, or name it: PYTHON=/path/to/python3.11 tools/install.sh"
if ! "${venv_python}" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  if [ "${venv_python}" = "${python}" ]; then hint="PYTHON=python3.11 tools/install.sh (or a newer one)"
  else hint="remove ${venv} and run PYTHON=python3.11 tools/install.sh (or a newer one)"; fi
  die "Python 3.11 or newer is needed, ${venv_python} is $("${venv_python}" -V 2>&1): ${hint}"
fi
# Debian and Ubuntu ship venv's pip bootstrap, ensurepip, apart (pythonX.Y-venv, not installed with
# python3 on Ubuntu 24.04): without it python -m venv stops halfway, leaving a venv without pip.
if [ ! -x "${venv}/bin/python" ] && ! "${python}" -c 'import ensurepip' 2>/dev/null; then
  venv_pkg=$("${python}" -c 'import sys; print("python%d.%d-venv" % sys.version_info[:2])')
  no_venv="${python} cannot make a virtual environment with pip (it has no ensurepip module)"
  [ "${can_apt}" = yes ] || die "${no_venv}: install the package ${venv_pkg}" \
    "(sudo apt-get install ${venv_pkg} on Debian/Ubuntu), or name another python: PYTHON=/path/to/python3 tools/install.sh"
  log "${no_venv}: installing the Debian package ${venv_pkg}"
  if ! install_tool "${venv_pkg}" || ! { ${dry_run} || "${python}" -c 'import ensurepip' 2>/dev/null; }; then
    die "${no_venv}, and apt-get install ${venv_pkg} did not bring it: name another python:" \
      "PYTHON=/path/to/python3 tools/install.sh"
  fi
fi
if [ -x "${venv}/bin/python" ] && ! "${venv}/bin/python" -c 'import pip' 2>/dev/null; then
  die "${venv} has no pip (python -m venv stopped halfway): remove it, rm -r ${venv}, and run tools/install.sh again"
fi

# ---- Which torch --------------------------------------------------------------
# torch_found: "<where> <build> <version>" (where: venv|system, build: cpu|cuda) or "none".
venv_exists=false
if [ -x "${venv}/bin/python" ]; then venv_exists=true; fi
# The version is the installed distribution's, which pip compares pins with: PyPI's CUDA
# build reports torch.__version__ 2.11.0+cu130 but is installed as 2.11.0.
# A torch without package metadata (a module system's, a source tree on PYTHONPATH) gives its own.
# torch is imported only then: just installed, before numpy, it warns "Failed to initialize NumPy".
torch_dist_version="
import importlib.metadata
try:
    installed = importlib.metadata.version('torch')
except importlib.metadata.PackageNotFoundError:
    import torch
    installed = torch.__version__"
probe_torch() {  # PYTHON -> "<build> <version>", or nothing when no torch works there
  "$1" - <<PY 2>/dev/null || true
${torch_dist_version}
import torch
torch.zeros(2).add(1)  # imports and computes
print("cuda" if torch.version.cuda else "cpu", installed)
PY
}
if [ -n "${CRAB_INSTALL_TORCH_STATE:-}" ]; then
  fake=${CRAB_INSTALL_TORCH_STATE}
  case "${fake%%:*}" in
    none) torch_found=none ;;
    venv-cpu|venv-cuda|system-cpu|system-cuda)
      where=${fake%%-*}; build=${fake%%:*}; build=${build#*-}
      if [ "${build}" = cuda ]; then version=${cuda_torch_version}; else version=${cpu_torch_version}; fi
      if [[ "${fake}" == *:* ]]; then version=${fake#*:}; fi
      torch_found="${where} ${build} ${version}"
      if [ "${where}" = venv ]; then venv_exists=true; fi ;;
    *) die "CRAB_INSTALL_TORCH_STATE must be none, venv-cpu, venv-cuda, system-cpu or system-cuda[:VERSION]" ;;
  esac
elif ${venv_exists}; then
  found=$(probe_torch "${venv}/bin/python"); torch_found=${found:+venv ${found}}
elif "${python}" -c 'import sys; sys.exit(sys.prefix == sys.base_prefix)' 2>/dev/null; then
  # a venv made from a venv's python sees the base interpreter's packages, not that venv's
  log "${python} is a virtual environment's python (one is active?): its torch cannot be kept"
else
  found=$(probe_torch "${python}"); torch_found=${found:+system ${found}}
fi
torch_found=${torch_found:-none}
if ${venv_exists}; then looked_in="the venv (${venv})"; else looked_in=${python}; fi

case "${CRAB_INSTALL_GPU:-}" in
  yes|no) gpu=${CRAB_INSTALL_GPU} ;;
  "") gpu=no
      if nvidia-smi -L >/dev/null 2>&1 || [ -e /proc/driver/nvidia/version ]; then gpu=yes; fi ;;
  *) die "CRAB_INSTALL_GPU must be yes or no" ;;
esac

read -r found_where found_build found_version <<< "${torch_found}"
if [ "${torch_found}" = none ]; then
  log "torch: none found in ${looked_in}; NVIDIA GPU: ${gpu}; --torch ${torch_mode}"
else
  log "torch: ${found_version} (${found_build} build) found in the ${found_where} python; NVIDIA GPU: ${gpu}; --torch ${torch_mode}"
  if ! version_ok "${found_version}"; then
    log "torch ${found_version} is older than ${min_torch} (torch.load is unsafe there): not kept"
    if [ "${torch_mode}" = keep ]; then die "--torch keep: the torch found (${found_version}) is older than ${min_torch}; use --torch auto, cpu or cuda"; fi
    torch_found=none
  fi
fi

# torch_action: keep | cpu | cuda
case "${torch_mode}" in
  keep)
    [ "${torch_found}" != none ] \
      || die "--torch keep: no working torch in ${looked_in}; use --torch auto, cpu or cuda"
    torch_action=keep ;;
  auto)
    if [ "${torch_found}" != none ]; then torch_action=keep
    elif [ "${gpu}" = yes ]; then torch_action=cuda
    else torch_action=cpu; fi ;;
  cpu|cuda)
    if [ "${torch_found}" != none ] && [ "${found_build}" = "${torch_mode}" ]; then torch_action=keep
    else torch_action=${torch_mode}; fi
    if [ "${torch_mode}" = cuda ] && [ "${gpu}" = no ]; then
      log "--torch cuda but no NVIDIA GPU detected: the CUDA build will run on the CPU only"
    fi ;;
esac

# ---- Virtual environment ----------------------------------------------------------
if ! ${venv_exists}; then
  venv_opts=()
  if [ "${torch_action}" = keep ] && [ "${found_where}" = system ]; then
    log "Keeping ${python}'s torch ${found_version}: the venv will see it (--system-site-packages)"
    venv_opts=(--system-site-packages)
  fi
  log "Creating virtual environment ${venv}"
  run "${python}" -m venv "${venv_opts[@]}" "${venv}"
fi
py="${venv}/bin/python"
pip_cmd=("${py}" -m pip --disable-pip-version-check -q)
pip() { run "${pip_cmd[@]}" "$@"; }
torchaudio_lib() {  # the venv's torchaudio/lib, or nothing when there is no torchaudio
  [ -x "${py}" ] || return 0
  "${py}" -c "import importlib.util, os; s = importlib.util.find_spec('torchaudio'); print(os.path.join(os.path.dirname(s.origin), 'lib') if s else '')" 2>/dev/null || true
}

case "${torch_action}" in
  keep)
    log "Keeping torch ${found_version} (${found_build} build)"
    torch_pin=${found_version} ;;
  cpu)
    torch_pin=${cpu_torch_version}
    log "Installing torch==${torch_pin} (CPU build): from pip's configured sources, else from PyTorch's CPU index"
    fallback=(install --index-url "${cpu_index}" "torch==${torch_pin}")
    if ${dry_run}; then
      echo "+ ${pip_cmd[*]} install torch==${torch_pin}"
      echo "+ (if that fails) ${pip_cmd[*]} ${fallback[*]}"
    elif ! "${pip_cmd[@]}" install "torch==${torch_pin}" > "${venv}/pip-torch.log" 2>&1; then
      log "torch==${torch_pin} is not on pip's configured sources (${venv}/pip-torch.log): trying ${cpu_index}"
      "${pip_cmd[@]}" "${fallback[@]}" || die "torch==${torch_pin} could not be installed from" \
        "${cpu_index} either (see pip's error above). Where PyTorch's index cannot be reached," \
        "tools/install.sh --torch cuda installs the CUDA build from PyPI instead (a few GB), which" \
        "runs on the CPU too"
    fi ;;
  cuda)
    torch_pin=${cuda_torch_version}
    log "Installing the CUDA build from PyPI: torch==${torch_pin} torchaudio==${torch_pin}"
    ta_lib=$(torchaudio_lib)
    pip install "torch==${torch_pin}" "torchaudio==${torch_pin}"
    if [ -n "${ta_lib}" ] && ! compgen -G "${ta_lib}/*.so" >/dev/null; then
      log "torchaudio's compiled extension was removed for a CPU torch earlier: reinstalling it"
      pip install --no-deps --force-reinstall "torchaudio==${torch_pin}"
    fi ;;
esac
if ! ${dry_run}; then torch_pin=$("${py}" -c "${torch_dist_version}
print(installed)"); fi

# ---- Pinned dependencies and crab -----------------------------------------------
stamp="${venv}/.crab-requirements"
want="$(cat "${tools_dir}/requirements.txt" "${root}/setup.py") torch=${torch_pin}"
if [ -f "${stamp}" ] && [ "$(cat "${stamp}")" = "${want}" ]; then
  log "Dependencies and crab already installed"
else
  log "Installing pinned dependencies and crab (editable)"
  # The constraint keeps pip from replacing the torch chosen above.
  if ${dry_run}; then echo "+ echo torch==${torch_pin} > ${venv}/torch-constraint.txt"
  else echo "torch==${torch_pin}" > "${venv}/torch-constraint.txt"; fi
  pip install -c "${venv}/torch-constraint.txt" -r "${tools_dir}/requirements.txt"
  pip install -c "${venv}/torch-constraint.txt" --no-deps -e "${root}"
  if ${dry_run}; then echo "+ (the stamp) > ${stamp}"; else echo "${want}" > "${stamp}"; fi
fi

# ---- torchaudio repair --------------------------------------------------------------
if ${dry_run} && { [ "${torch_action}" != keep ] || [ ! -x "${py}" ]; }; then
  log "Would check that torchaudio imports and remove its lib/*.so only if its extension fails to load"
elif ! "${py}" -c "import torchaudio" 2>/dev/null; then
  ta_lib=$(torchaudio_lib)
  log "torchaudio's compiled extension does not load against this torch:"
  log "removing ${ta_lib}/*.so so that torchaudio runs as pure Python"
  run rm -f "${ta_lib}"/*.so
  ${dry_run} || "${py}" -c "import torchaudio" || { log "torchaudio still fails to import"; exit 1; }
fi

if ${dry_run}; then
  log "Dry run: nothing changed"
  exit 0
fi
"${py}" -c "import crab, speechbrain, transformers, torch; print('crab', crab.__version__, '| torch', torch.__version__, '| speechbrain', speechbrain.__version__, '| transformers', transformers.__version__)"
if [ "${gpu}" = yes ]; then  # a torch that cannot use the GPU (a driver too old for its CUDA) says so here
  log "$("${py}" -c "from crab.devices import gpu_use; print(gpu_use())")"
fi
if [ -n "${missing_tools}" ]; then
  log "Still missing system tools:${missing_tools} (see above); the tests stop at once without them"
fi
log "Done. Activate with: . utils/path.sh"
