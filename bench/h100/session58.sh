#!/usr/bin/env bash
# GPU session 58 (weights joined from /root/mp, three earlier calls of this machine): matching
# the label priors (`nlbse --match-priors`, wick_trainer::priors), on fresh held-out splits
# 13-18 of heldout.py (never scored before). Session 58 saw, on the saved probabilities of
# sessions 46 and 52-54 (splits 1-12, scored before), that moving the shipped ensemble's
# probabilities so that their mean over a project's scored rows equals its training rows' label
# shares (a third each) raised validation on splits 7-12 (0.840 to 0.846) and test on both
# halves (splits 1-6: 0.840 to 0.848; 7-12: 0.839 to 0.842). That is no evidence until it holds
# on rows that played no part. One variant, six splits side by side: the shipped pipeline as
# `make nlbse-mpnet` runs it (configs/nlbse-mpnet.toml and configs/nlbse-mpnet-lora.toml in one
# process, three members each, bf16) with --match-priors, whose nlbse.json holds both the
# matched scores and the unmatched ones ("unmatched") of the same members. The rule, fixed here:
# `make nlbse-mpnet` passes --match-priors if the matched validation mean over the six splits is
# above the unmatched one; the test means of both are reported either way. Later calls run
# `DIR=/root/s58/results bench/h100/poll.sh`.
set -u
W=/root/s58; . bench/h100/mpnet_setup.sh
SPLITS=${SPLITS:-13 14 15 16 17 18}
VARIANTS=${VARIANTS:-"mix --config $W/nlbse-mpnet-lora.toml --match-priors"}
. bench/h100/heldout_variants.sh
