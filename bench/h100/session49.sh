#!/usr/bin/env bash
# GPU session 49 (weights joined from /root/mp, three earlier calls of this machine): text
# cleaning (data.clean, new) on the shipped MPNet pipeline (configs/nlbse-mpnet.toml: three
# members holding out the same 48 rows, head_tail 128, 512 tokens, bf16, the contrastive term at
# 0.5): HTML comments and <details> sections removed, fenced code blocks over 8 lines cut to
# their first 4 and last 4, on held-out splits 1-6 of heldout.py, six processes side by side.
# Baseline (session 46, the shipped pipeline without cleaning): test 0.823 / 0.863 / 0.836 /
# 0.815 / 0.824 / 0.833 (mean 0.832), validation mean 0.844. Later calls run
# `DIR=/root/s49/results bench/h100/poll.sh`.
set -u
W=/root/s49; . bench/h100/mpnet_setup.sh
SPLITS=${SPLITS:-1 2 3 4 5 6}
VARIANTS=${VARIANTS:-"clean8 --set data.clean.html_comments=true --set data.clean.details=true --set data.clean.code_lines=8"}
. bench/h100/heldout_variants.sh
