#!/usr/bin/env bash
# GPU session 31: the two runs session 30 left out, on session 24's held-out splits (60 issues per
# project never used for training or selection) with configs/nlbse-mpnet.toml (max_len 512, lr
# 2e-5, bf16, weights-only checkpoints): five-member ensembles (`--ensemble 5`, seeds 42-46), and
# each member refit on all 240 rows of its split for the epochs its best checkpoint had
# (`--refit`: the "refit" rows, what a submission trained on every training row would be). The
# three splits run side by side in a process of their own session (setsid), so that they outlive
# this call: later calls of the same warm machine run `bench/h100/poll.sh`, which waits and
# brings back /root/s31/results. A project's checkpoints are deleted once the next project of
# its split has started (its ensemble has been scored by then): 5 members x (best + last + refit)
# of 436 MB each, per project and split, stay in /dev/shm at a time. The weights are in /root/mp
# from four earlier calls of this machine (see session25.sh).
set -u
W=/root/s31; . bench/h100/mpnet_setup.sh
cp configs/nlbse-mpnet.toml $W/
H=$W/heldout; mkdir -p $H
python3 bench/h100/heldout.py "$W/issues_train.csv" "$H"
wc -l $H/*.csv > $R/heldout_files.txt
rm -rf /dev/shm/nl_*
cat > $W/run.sh <<RUN
#!/usr/bin/env bash
export HF_HUB_OFFLINE=1
cd $W
for split in ${SPLITS:-1 2 3}; do
  ( t0=\$SECONDS
    $W/bin/nlbse --device cuda --config $W/nlbse-mpnet.toml --ensemble 5 --refit --test $H/test_\$split.csv \
      --set model.path=$M --set data.train=\"$H/train_\$split.csv\" --set data.split_seed=\$split --set train.seed=42 \
      --set train.lr=2e-5 --set train.precision=bf16 --set data.max_len=512 \
      --out /dev/shm/nl_\$split --json > $R/heldout_split\$split.txt 2> $R/heldout_split\$split.log
    echo "rc \$? wall \$((SECONDS - t0)) s" >> $R/heldout_split\$split.txt
    cp /dev/shm/nl_\$split/nlbse.json $R/heldout_split\$split.json ) &
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
