# shellcheck shell=bash
# Where the corpus is: the one place a user edits (or exports the variable).
# To rename CORPUS_ROOT after your corpus (e.g. EMODB_ROOT), rename it in run.sh too: its
# --data_root "${CORPUS_ROOT}" and --data_root_var CORPUS_ROOT (named in errors).
CORPUS_ROOT=${CORPUS_ROOT:-}
