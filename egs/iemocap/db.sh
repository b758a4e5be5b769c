# shellcheck shell=bash
# Where the corpus is: the one place a user edits (or exports the variable).
# IEMOCAP: absolute path of IEMOCAP_full_release (the directory holding Session1..Session5).
IEMOCAP=${IEMOCAP:-}
