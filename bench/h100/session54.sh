#!/usr/bin/env bash
# GPU session 54 (weights joined from /root/mp, three earlier calls of this machine): an ensemble
# of full fine-tuning and LoRA, decided before this run on fresh held-out splits 7-12 of
# heldout.py (never scored before). Session 53 saw, after the test rows of splits 1-6 had been
# scored, that the mean of the shipped three members' and three LoRA members' probabilities beat
# either alone; that is no evidence until it holds on rows that played no part. Two variants,
# six splits each, twelve processes side by side (about 75 GiB of GPU memory together: an H200):
#   full: configs/nlbse-mpnet.toml as shipped (three members, head_tail 128, 512 tokens, bf16,
#         the contrastive term at 0.5);
#   lora: configs/nlbse-mpnet-lora.toml (the same with rank-16 adapters, alpha 32, on all six
#         linear layers, lr 1e-3: session 52-53's setting).
# Each run writes its ensemble's validation and test probabilities; combine.py then scores the
# mix (the six members' mean) on both. The rule, fixed here: the NLBSE MPNet pipeline becomes
# the mix if its validation mean over the six splits is above the full fine-tuning's; the test
# means of all three are reported either way. Later calls run
# `DIR=/root/s54/results bench/h100/poll.sh`.
set -u
W=/root/s54; . bench/h100/mpnet_setup.sh
SPLITS=${SPLITS:-7 8 9 10 11 12}
VARIANTS=${VARIANTS:-"full
lora @nlbse-mpnet-lora.toml"}
. bench/h100/heldout_variants.sh
