# shellcheck shell=bash
# Where the corpus is: the one place a user edits (or exports the variable).
# Rename CORPUS_ROOT after your corpus, e.g. EMODB_ROOT.
CORPUS_ROOT=${CORPUS_ROOT:-}
