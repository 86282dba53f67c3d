#!/usr/bin/env bash
# GPU session 38: no warm-up and hidden dropout 0.2 (what session 36's sweep chose for the MiniLM
# config) for all-mpnet-base-v2 on NLBSE'24: configs/nlbse-mpnet.toml otherwise as shipped (lr
# 2e-5, 512 tokens, bf16, three members, seeds 42-44), on the six held-out splits of heldout.py
# (60 issues per project never used for training or selection) where the shipped configuration
# scored 0.825 / 0.863 / 0.830 / 0.805 / 0.817 / 0.816 (sessions 30 and 33). The six runs go side
# by side in a process of their own session (setsid), so they outlive this call; later calls run
# `DIR=/root/s38/results bench/h100/poll.sh`. A project's checkpoints are deleted once the next
# project of its run has started. The weights are in /root/mp from four earlier calls of this
# machine (see session25.sh).
set -u
W=/root/s38; . bench/h100/mpnet_setup.sh
cp configs/nlbse-mpnet.toml $W/
H=$W/heldout; mkdir -p $H
python3 bench/h100/heldout.py "$W/issues_train.csv" "$H" 1 2 3 4 5 6
wc -l $H/*.csv > $R/heldout_files.txt
rm -rf /dev/shm/nl_*
cat > $W/run.sh <<RUN
#!/usr/bin/env bash
export HF_HUB_OFFLINE=1
cd $W
for split in 1 2 3 4 5 6; do
  ( t0=\$SECONDS
    $W/bin/nlbse --device cuda --config $W/nlbse-mpnet.toml --ensemble 3 --test $H/test_\$split.csv \
      --set model.path=$M --set data.train=\"$H/train_\$split.csv\" --set data.split_seed=\$split \
      --set train.seed=42 --set train.precision=bf16 --set train.warmup_ratio=0.0 --set model.hidden_dropout=0.2 \
      --out /dev/shm/nl_\$split --json > $R/heldout_\$split.txt 2> $R/heldout_\$split.log
    echo "rc \$? wall \$((SECONDS - t0)) s" >> $R/heldout_\$split.txt
    cp /dev/shm/nl_\$split/nlbse.json $R/heldout_\$split.json ) &
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
