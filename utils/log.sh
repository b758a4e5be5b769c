# shellcheck shell=bash
# Source me: log() with a timestamp and the caller's file:line, as in ESPnet recipes, and
# quote_words, a command line as one line to read and paste back into a shell.
log() {
  local fname=${BASH_SOURCE[1]##*/}
  printf '%s (%s:%s:%s) %s\n' "$(date '+%Y-%m-%dT%H:%M:%S')" "${fname}" "${BASH_LINENO[0]}" "${FUNCNAME[1]}" "$*"
}

quote_words() {  # "$@" as one line to paste back into a shell: words quoted where they need it
  local word line=
  for word in "$@"; do
    if [[ ${word} =~ [[:cntrl:]] ]]; then
      word=${word@Q}  # $'...'; not for the rest: in a non-UTF-8 locale (C) it writes ü as $'\303\274'
    elif ! [[ ${word} =~ ^[A-Za-z0-9_./=:,+@%-]+$ ]]; then
      word="'${word//\'/\'\\\'\'}'"
    fi
    line+=" ${word}"
  done
  echo "${line# }"
}
