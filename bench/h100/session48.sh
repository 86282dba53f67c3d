#!/usr/bin/env bash
# GPU session 48 (weights joined from /root/mp, three earlier calls of this machine; the first of
# them also ran the GPU tests: session45.sh's command on /root/tests.xz): R-Drop
# (train.rdrop_weight, new) on the shipped MPNet pipeline (configs/nlbse-mpnet.toml: three
# members holding out the same 48 rows, head_tail 128, 512 tokens, bf16, the contrastive term at
# 0.5), α = 1, on held-out splits 1-6 of heldout.py, six processes side by side.
# Baseline (session 46, the shipped pipeline without R-Drop): test 0.823 / 0.863 / 0.836 /
# 0.815 / 0.824 / 0.833 (mean 0.832), validation mean 0.844. Later calls run
# `DIR=/root/s48/results bench/h100/poll.sh`.
set -u
W=/root/s48; . bench/h100/mpnet_setup.sh
SPLITS=${SPLITS:-1 2 3 4 5 6}
VARIANTS=${VARIANTS:-"rdrop1 --set train.rdrop_weight=1.0"}
. bench/h100/heldout_variants.sh
