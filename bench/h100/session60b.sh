#!/usr/bin/env bash
# GPU session 60, second part (weights joined from /root/mp, three earlier calls of this machine;
# an H200 as session 58): wick's own masked-LM adaptation (`nlbse --adapt-epochs 30`,
# wick_trainer::adapt) before the shipped pipeline, on held-out splits 17 and 18, whose shipped
# figures session 58 measured on this kind (validation 0.850 / 0.818, test 0.816 / 0.843,
# unmatched). session60.sh measured the same recipe in PyTorch (bench/tapt.py) on splits 13-16;
# wick's differs in that each project's texts are read as the config reads them (head and tail,
# 512 tokens) where tapt.py kept the first 512 tokens, and in its random streams. Per project:
# 3 epochs of the fresh masked-LM head alone at 1e-3, then 30 of everything at 5e-5, batch 32,
# bf16, on its 240 training rows of the split (texts only); then both configs, three members
# each, start from the adapted encoder. The rule is session60.sh's, over all the splits with
# adaptation (13-18): adaptation joins `make nlbse-mpnet` if its unmatched test mean is above the
# shipped pipeline's on the same splits by more than the standard error of the split
# differences. Later calls run `DIR=/root/s60b/results bench/h100/poll.sh`.
set -u
W=/root/s60b; . bench/h100/mpnet_setup.sh
SPLITS=${SPLITS:-17 18}
VARIANTS=${VARIANTS:-"adapt --config $W/nlbse-mpnet-lora.toml --match-priors --adapt-epochs 30"}
. bench/h100/heldout_variants.sh
