# shellcheck shell=bash
# Source me: log() with a timestamp and the caller's file:line, as in ESPnet recipes,
# quote_words, a command line as one line to read and paste back into a shell, and
# options_help, the options of a script for its --help.
log() {
  local fname=${BASH_SOURCE[1]##*/}
  printf '%s (%s:%s:%s) %s\n' "$(date '+%Y-%m-%dT%H:%M:%S')" "${fname}" "${BASH_LINENO[0]}" "${FUNCNAME[1]}" "$*"
}

# options_help FILE FIRST LAST: "  --name [default] meaning" for each "name=default  # meaning" line
# of script FILE (a meaning continued on indented "# ..." lines) from its first line matching the
# awk regex FIRST ("": line 1) to the one before the first line matching LAST
options_help() {
  awk -v first="$2" -v last="$3" '
    !on { if ($0 !~ first) next; on = 1 }
    $0 ~ last { exit }
    /^[a-z][a-z0-9_]*=/ {
      name = $0; sub(/=.*/, "", name); value = $0; sub(/^[a-z0-9_]+=/, "", value); sub(/ *#.*/, "", value)
      gsub(/"/, "", value)
      text = ""; if ($0 ~ /#/) { text = $0; sub(/^[^#]*# */, "", text) }
      line = sprintf("  --%-15s %-7s %s", name, "[" value "]", text); sub(/ +$/, "", line); print line
      more = 1; next }
    more && /^ +#/ { text = $0; sub(/^ +# */, "", text); printf "  %-25s %s\n", "", text; next }
    { more = 0 }' "$1"
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
