#!/usr/bin/env bash
# GPU session 56 (weights joined from /root/mp, three earlier calls of this machine): a third
# member kind for session 54's ensemble, on the same fresh held-out splits 7-12: LoRA
# (configs/nlbse-mpnet-lora.toml) reading each issue's first 512 tokens (`data.truncation =
# "head"`) instead of its head and tail: another way of training and another view of the long
# issues. Three members per split, six processes side by side. The rule, fixed here: the
# shipped ensemble gains this config if the mean of the nine members' probabilities has a
# validation mean over the six splits above the six members' 0.840 (session 54); the test means
# are reported either way. Later calls run `DIR=/root/s56/results bench/h100/poll.sh`.
set -u
W=/root/s56; . bench/h100/mpnet_setup.sh
SPLITS=${SPLITS:-7 8 9 10 11 12}
VARIANTS=${VARIANTS:-"lorahead @nlbse-mpnet-lora.toml --set data.truncation=\"head\""}
. bench/h100/heldout_variants.sh
