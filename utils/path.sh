# shellcheck shell=bash
# Source me: activates the repository's virtual environment (tools/install.sh).
if [ -z "${BASH_VERSION:-}" ]; then  # this file finds itself through bash's BASH_SOURCE
  echo "utils/path.sh needs bash (in another shell: . tools/venv/bin/activate)" >&2
  # shellcheck disable=SC2317
  return 1 2>/dev/null || exit 1
fi
CRAB_ROOT=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)
if [ ! -f "${CRAB_ROOT}/tools/venv/bin/activate" ]; then
  echo "No environment at ${CRAB_ROOT}/tools/venv: run ${CRAB_ROOT}/tools/install.sh first" >&2
  # Sourced (the normal use) it returns; run as a script, return fails and it exits.
  # shellcheck disable=SC2317
  return 1 2>/dev/null || exit 1
fi
# A venv holds its own path (activate's VIRTUAL_ENV, its scripts' #! lines): moved or copied
# with the checkout, it would put a folder that is gone (or another checkout's) first on PATH.
# shellcheck disable=SC1091
made_in=$(. "${CRAB_ROOT}/tools/venv/bin/activate" > /dev/null 2>&1 && echo "${VIRTUAL_ENV:-}")
if ! [ "${made_in}" -ef "${CRAB_ROOT}/tools/venv" ]; then
  echo "${CRAB_ROOT}/tools/venv was made in ${made_in:-another folder} (the checkout was moved or copied)," \
    "and a virtual environment does not move: run ${CRAB_ROOT}/tools/install.sh, which makes it again here" >&2
  # shellcheck disable=SC2317
  return 1 2>/dev/null || exit 1
fi
unset made_in
# shellcheck disable=SC1091
. "${CRAB_ROOT}/tools/venv/bin/activate"
# this checkout's crab, not another one's that the user's PYTHONPATH names
export PYTHONPATH=${CRAB_ROOT}${PYTHONPATH:+:${PYTHONPATH}}
export PYTHONUNBUFFERED=1
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}
