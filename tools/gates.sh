#!/usr/bin/env bash
# The quality gates CI runs before the tests (.ci/run); run them by hand the same way.
#
#   tools/gates.sh [GATE ...]        GATE: ruff-lint ruff-format shellcheck doctests (default: all)
#
#   - ruff-lint    ruff check: the rules of ruff.toml on every Python file of the repository
#   - ruff-format  ruff format --check: the formatting of ruff.toml (line length 110)
#   - shellcheck   shellcheck on every tracked shell script (.shellcheckrc)
#   - doctests     the >>> examples of the public API: Crab, CrabBrain, CrabClassifier,
#                  SupervisionLegs, the losses, the metrics, the paired comparison, the random streams
#                  of their own, the epoch choice
#
# Every gate runs, then prints one line, "gate NAME: ok (Ns)" or "gate NAME: FAILED (Ns)", after
# its findings; the script exits 1 when any gate failed. Fix with: ruff check --fix, ruff format,
# and by hand for shellcheck and the doctests. Needs tools/install.sh (ruff in the venv, shellcheck).
case ${BASH_VERSION:-} in 4.[4-9]* | [5-9].* | [1-9][0-9].*) ;; *) echo "$0 needs bash 4.4 or newer${BASH_VERSION:+ (this is bash ${BASH_VERSION})}: run it as bash $0" >&2; exit 1 ;; esac
set -uo pipefail
unset CDPATH  # a relative cd goes here, never to a namesake on the user's CDPATH
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "${root}" || exit 2
venv=${CRAB_VENV:-${root}/tools/venv}
all_gates="ruff-lint ruff-format shellcheck doctests"
doctest_modules="crab/model.py crab/brain.py crab/inference.py crab/legs.py crab/losses.py crab/metrics.py crab/paired.py crab/embeddings.py crab/seeds.py crab/selection.py"

case " $* " in
  *" --help "*|*" -h "*) sed -n '2,/^\[ -n/{/^#/!d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; exit 0 ;;
esac
gates=("$@")
[ ${#gates[@]} -gt 0 ] || read -r -a gates <<< "${all_gates}"
for gate in "${gates[@]}"; do
  case " ${all_gates} " in *" ${gate} "*) ;; *) echo "gates.sh: unknown gate '${gate}' (one of: ${all_gates})" >&2; exit 2 ;; esac
done

# shell_scripts: the tracked shell scripts (*.sh and .ci/run), symlinks left out (their targets are tracked).
shell_scripts() {
  local f
  git ls-files -- '*.sh' .ci/run | while IFS= read -r f; do [ -L "${f}" ] || echo "${f}"; done
}

run_gate() {
  case "$1" in
    ruff-lint) "${venv}/bin/ruff" check --no-cache . ;;
    ruff-format) "${venv}/bin/ruff" format --check --no-cache . ;;
    shellcheck)
      local scripts
      mapfile -t scripts < <(shell_scripts)
      [ ${#scripts[@]} -gt 0 ] || { echo "no shell scripts found (not a git checkout?)"; return 1; }
      shellcheck "${scripts[@]}" ;;
    doctests)
      # shellcheck disable=SC2086  # the module list splits on spaces
      HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 "${venv}/bin/python" -m pytest -q -p no:cacheprovider \
        --doctest-modules ${doctest_modules} ;;
  esac
}

failed=()
for gate in "${gates[@]}"; do
  start=${SECONDS}
  if run_gate "${gate}"; then
    echo "gate ${gate}: ok ($((SECONDS - start))s)"
  else
    echo "gate ${gate}: FAILED ($((SECONDS - start))s)"
    failed+=("${gate}")
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "gates FAILED: ${failed[*]} (see the findings above each 'gate NAME: FAILED' line)"
  exit 1
fi
echo "gates ok: ${gates[*]}"
