#!/usr/bin/env bash
# GPU session 67 (weights joined from /root/mp, four earlier calls of this machine): the shipped
# MPNet pipeline reading each issue's title and body as a text pair (`data.text_fields =
# ["title"]`, `data.pair_fields = ["body"]`: `<s> title </s></s> body </s>`, MPNet having no
# segment table; the body cut by head_tail 128 within what the title leaves), on held-out splits
# 13-18 of heldout.py, against session 58's shipped runs on the same splits (the joined text;
# same kind of GPU, an H200; session 60's build repeated its split 13 exactly). As
# `make nlbse-mpnet` runs it: configs/nlbse-mpnet.toml and configs/nlbse-mpnet-lora.toml in one
# process, three members each, bf16, six processes side by side. MiniLM gained +0.005 from
# pairs on validation (session 66). The rule, written here before the run: both MPNet configs
# read pairs if the pairs' validation mean over the six splits is above session 58's unmatched
# 0.833 (0.817 / 0.841 / 0.815 / 0.859 / 0.850 / 0.818) by more than the standard error of the
# per-split differences; the test means are reported either way. Later calls run
# `DIR=/root/s67/results bench/h100/poll.sh`.
set -u
W=/root/s67; . bench/h100/mpnet_setup.sh
SPLITS=${SPLITS:-13 14 15 16 17 18}
VARIANTS=${VARIANTS:-"pairs --config $W/nlbse-mpnet-lora.toml --set 'data.text_fields=[\"title\"]' --set 'data.pair_fields=[\"body\"]'"}
. bench/h100/heldout_variants.sh
