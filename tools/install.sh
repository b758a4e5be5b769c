#!/usr/bin/env bash
# Create tools/venv with the pinned dependencies and the crab package (editable).
#
#   tools/install.sh            # idempotent: a second run checks and changes nothing
#
# torch: an already working CUDA torch in the venv is kept; otherwise the CPU
# build torch==2.13.0+cpu is installed (pip finds it through its find-links).
# torchaudio: PyPI wheels are CUDA builds whose compiled extension cannot load
# against CPU torch; only where it fails to load are its torchaudio/lib/*.so
# removed, which leaves the pure-Python part SpeechBrain needs.
# espeak-ng (mini recipe corpus) is installed with apt-get where we are root.
set -euo pipefail

tools_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "${tools_dir}")
venv=${CRAB_VENV:-${tools_dir}/venv}
python=${PYTHON:-python3}
cpu_torch="torch==2.13.0+cpu"

log() { echo "$(date '+%Y-%m-%dT%H:%M:%S') (install.sh:${BASH_LINENO[0]}) $*"; }

if [ ! -x "${venv}/bin/python" ]; then
  venv_opts=""
  if "${python}" -c "import torch, sys; sys.exit(not torch.cuda.is_available())" 2>/dev/null; then
    log "${python} has a working CUDA torch: the venv will see it (--system-site-packages)"
    venv_opts="--system-site-packages"
  fi
  log "Creating virtual environment ${venv}"
  "${python}" -m venv ${venv_opts} "${venv}"
fi
py="${venv}/bin/python"
pip() { "${py}" -m pip --disable-pip-version-check -q "$@"; }

torch_state=$("${py}" - <<'PY' 2>/dev/null || echo missing
import torch
print("cuda" if torch.version.cuda and torch.cuda.is_available() else torch.__version__)
PY
)
case "${torch_state}" in
  cuda) log "Keeping the working CUDA torch already installed" ;;
  2.13.0+cpu) log "torch ${torch_state} already installed" ;;
  *) log "Installing ${cpu_torch} (found: ${torch_state})"; pip install "${cpu_torch}" ;;
esac
torch_pin=$("${py}" -c 'import torch; print(torch.__version__)')

stamp="${venv}/.crab-requirements"
want="$(cat "${tools_dir}/requirements.txt" "${root}/setup.py") torch=${torch_pin}"
if [ -f "${stamp}" ] && [ "$(cat "${stamp}")" = "${want}" ]; then
  log "Dependencies and crab already installed"
else
  log "Installing pinned dependencies and crab (editable)"
  # The constraint keeps pip from replacing the torch installed above.
  echo "torch==${torch_pin}" > "${venv}/torch-constraint.txt"
  pip install -c "${venv}/torch-constraint.txt" -r "${tools_dir}/requirements.txt"
  pip install -c "${venv}/torch-constraint.txt" --no-deps -e "${root}"
  echo "${want}" > "${stamp}"
fi

if ! "${py}" -c "import torchaudio" 2>/dev/null; then
  ta_lib=$("${py}" -c "import importlib.util, os; print(os.path.join(os.path.dirname(importlib.util.find_spec('torchaudio').origin), 'lib'))")
  log "torchaudio's compiled extension does not load against this torch:"
  log "removing ${ta_lib}/*.so so that torchaudio runs as pure Python"
  rm -f "${ta_lib}"/*.so
  "${py}" -c "import torchaudio" || { log "torchaudio still fails to import"; exit 1; }
fi

if ! command -v espeak-ng >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "Installing espeak-ng (Debian package) for the mini recipe"
    apt-get install -y -q espeak-ng >/dev/null \
      || { apt-get update -q >/dev/null && apt-get install -y -q espeak-ng >/dev/null; }
  else
    log "espeak-ng not found: install it (e.g. 'sudo apt-get install espeak-ng') to run egs/mini"
  fi
fi

"${py}" -c "import crab, speechbrain, transformers, torch; print('crab', crab.__version__, '| torch', torch.__version__, '| speechbrain', speechbrain.__version__, '| transformers', transformers.__version__)"
log "Done. Activate with: . utils/path.sh"
