#!/usr/bin/env bash
# GPU session 53 (right after session 52, the same machine and weights in /root/mp): session
# 52's better variant on validation (LoRA rank 16, alpha 32, all six linear layers, lr 1e-3) on
# held-out splits 4-6 of heldout.py, three processes side by side, so that it has the six splits
# the shipped pipeline was measured on (session 46: test 0.815 / 0.824 / 0.833 on splits 4-6).
# Later calls run `DIR=/root/s53/results bench/h100/poll.sh`.
set -u
W=/root/s53; . bench/h100/mpnet_setup.sh
SPLITS=${SPLITS:-4 5 6}
ALL="\"model.lora.targets=['query','key','value','attention_output','intermediate','output']\""
VARIANTS=${VARIANTS:-"lora16_1e-3 --set model.lora.rank=16 --set model.lora.alpha=32 --set $ALL --set train.lr=1e-3"}
. bench/h100/heldout_variants.sh
