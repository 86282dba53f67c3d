#!/usr/bin/env bash
# GPU session 52 (weights joined from /root/mp, three earlier calls of this machine): LoRA
# (`[model.lora]`, new) on the shipped MPNet pipeline (configs/nlbse-mpnet.toml: three members
# holding out the same 48 rows, head_tail 128, 512 tokens, bf16, the contrastive term at 0.5):
# rank-16 adapters (alpha 32) on all six linear layers of every encoder layer, the encoder frozen,
# at lr 5e-4 and 1e-3 (LoRA's rates run 10-50x full fine-tuning's; the head keeps 1e-3), on
# held-out splits 1-3 of heldout.py, six processes side by side. Baseline (session 46, the
# shipped pipeline, full fine-tuning at 2e-5): test 0.823 / 0.863 / 0.836 on splits 1-3. Later
# calls run `DIR=/root/s52/results bench/h100/poll.sh`.
set -u
W=/root/s52; . bench/h100/mpnet_setup.sh
SPLITS=${SPLITS:-1 2 3}
ALL="\"model.lora.targets=['query','key','value','attention_output','intermediate','output']\""
VARIANTS=${VARIANTS:-"lora16_5e-4 --set model.lora.rank=16 --set model.lora.alpha=32 --set $ALL --set train.lr=5e-4
lora16_1e-3 --set model.lora.rank=16 --set model.lora.alpha=32 --set $ALL --set train.lr=1e-3"}
. bench/h100/heldout_variants.sh
