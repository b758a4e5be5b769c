# shellcheck shell=bash
# Where the corpus is: the one place a user edits (or exports the variable).
# MSP_PODCAST: absolute path of the MSP-Podcast release directory (holding Audios/ and Labels/),
# e.g. /data/MSP-PODCAST-Publish-2.0
MSP_PODCAST=${MSP_PODCAST:-}
