#!/usr/bin/env bash
# GPU session 35: layer-wise learning-rate decay (`train.layer_lr_decay`) for NLBSE'24 with
# all-mpnet-base-v2, on the held-out splits 4, 5, 6 of heldout.py (60 issues per project never
# used for training or selection), where session 33 measured the shipped configuration
# (configs/nlbse-mpnet.toml: lr 2e-5, no decay, 512 tokens, bf16, three members): 0.805 / 0.817 /
# 0.816. Two variants, each with three members (seeds 42-44):
#   a: layer_lr_decay 0.9, lr 5e-5 (layer 0 at 1.6e-5, the embeddings at 1.4e-5)
#   b: layer_lr_decay 0.8, lr 1e-4 (layer 0 at 8.6e-6, the embeddings at 6.9e-6)
# The six runs (2 variants x 3 splits) go side by side in a process of their own session
# (setsid), so they outlive this call; later calls run `DIR=/root/s35/results bench/h100/poll.sh`.
# A project's checkpoints are deleted once the next project of its run has started. The weights
# are in /root/mp from four earlier calls of this machine (see session25.sh).
set -u
W=/root/s35; . bench/h100/mpnet_setup.sh
cp configs/nlbse-mpnet.toml $W/
H=$W/heldout; mkdir -p $H
python3 bench/h100/heldout.py "$W/issues_train.csv" "$H" ${SPLITS:-4 5 6}
wc -l $H/*.csv > $R/heldout_files.txt
rm -rf /dev/shm/nl_*
cat > $W/run.sh <<RUN
#!/usr/bin/env bash
export HF_HUB_OFFLINE=1
cd $W
for v in ${VARIANTS:-"a 0.9 5e-5" "b 0.8 1e-4"}; do
  set -- \$v
  for split in ${SPLITS:-4 5 6}; do
    ( t0=\$SECONDS; name=\$1_\$split
      $W/bin/nlbse --device cuda --config $W/nlbse-mpnet.toml --ensemble 3 --test $H/test_\$split.csv \
        --set model.path=$M --set data.train=\"$H/train_\$split.csv\" --set data.split_seed=\$split \
        --set train.seed=42 --set train.precision=bf16 --set train.layer_lr_decay=\$2 --set train.lr=\$3 \
        --out /dev/shm/nl_\$name --json > $R/heldout_\$name.txt 2> $R/heldout_\$name.log
      echo "rc \$? wall \$((SECONDS - t0)) s" >> $R/heldout_\$name.txt
      cp /dev/shm/nl_\$name/nlbse.json $R/heldout_\$name.json ) &
  done
done
projects="facebook__react tensorflow__tensorflow microsoft__vscode bitcoin__bitcoin opencv__opencv"
while [ -n "\$(jobs -r)" ]; do
  sleep 20
  for d in /dev/shm/nl_*; do
    prev=""
    for p in \$projects; do [ -d \$d/\$p ] && [ -n "\$prev" ] && rm -rf \$d/\$prev; prev=\$p; done
  done
  echo "\$(date +%T) \$(df -h /dev/shm | tail -1) \$(nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader)" >> $R/timeline.txt
done
echo "\$(date +%T) done" >> $R/timeline.txt
touch $R/DONE
RUN
chmod +x $W/run.sh
nvidia-smi -L > $R/nvidia-smi.txt 2>&1
setsid nohup $W/run.sh > $W/run.out 2>&1 < /dev/null &
echo "started $(date +%T)" >> $R/timeline.txt
# Stay in the call while the runs go, so the machine is held; poll.sh takes over after.
DIR=$R bash bench/h100/poll.sh ${WAIT:-540}
