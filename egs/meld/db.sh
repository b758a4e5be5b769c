# shellcheck shell=bash
# Where MELD is: the one place a user edits (or exports the variables).
# MELD: the MELD.Raw directory (train/dev/test_sent_emo.csv and the mp4 folders).
MELD=${MELD:-}
# MELD_WAV: where stage 0 writes the 16 kHz wavs, <MELD_WAV>/{train,dev,test}/dia<D>_utt<U>.wav
# (the recipe's data_root). The default is inside data/: removing data/ removes them too.
MELD_WAV=${MELD_WAV:-${PWD}/data/wav16k}
