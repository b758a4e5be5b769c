# shellcheck shell=bash
# Source me: log() with a timestamp and the caller's file:line, as in ESPnet recipes.
log() {
  local fname=${BASH_SOURCE[1]##*/}
  echo -e "$(date '+%Y-%m-%dT%H:%M:%S') (${fname}:${BASH_LINENO[0]}:${FUNCNAME[1]}) $*"
}
