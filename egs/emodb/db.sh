# shellcheck shell=bash
# Where EmoDB is: the folder holding wav/ (the one place a user edits, or export EMODB).
EMODB=${EMODB:-}
