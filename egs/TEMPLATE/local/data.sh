#!/usr/bin/env bash
# Stage 1: write Kaldi-style data dirs <data_dir>/<fold>/<split>/ for your corpus.
#
# Each split dir needs wav.scp ("utt /path/to.wav"), text ("utt transcript"),
# utt2emo ("utt label", labels as in run.sh --classes) and utt2spk; any other
# utt2<field> (utt2gender, utt2session) becomes a manifest field. Paths should sit
# under --data_root so manifests are portable. Check what you found against what
# the corpus must contain and stop with a clear message when it differs.
case ${BASH_VERSION:-} in 4.[4-9]* | [5-9].* | [1-9][0-9].*) ;; *) echo "$0 needs bash 4.4 or newer${BASH_VERSION:+ (this is bash ${BASH_VERSION})}: run it as bash $0" >&2; exit 1 ;; esac
set -euo pipefail
. "$(dirname "$0")/../utils/in_recipe_dir.sh"
# Options (parse_options.sh sets them from --data_dir, --data_root); the code you write here uses them.
# shellcheck disable=SC2034
data_dir=data
# shellcheck disable=SC2034
data_root=
. utils/parse_options.sh

echo "$0: write the data preparation for your corpus here (see egs/TEMPLATE/README.md)" >&2
exit 1
