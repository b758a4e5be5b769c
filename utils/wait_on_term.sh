# shellcheck shell=bash
# Source me: on SIGTERM (a scheduler's time limit, scancel, a preemption), this shell waits
# for the commands it runs, which get the signal too and stop on their own (a training after
# saving its step), then exits with status 143. A shell that ended at once would end a batch
# job's script, and the job with it: the scheduler then kills what the script left running.
# A subshell that runs jobs one after another sets its own trap (utils/jobs.sh, parallel.sh).
trap 'wait; exit 143' TERM
