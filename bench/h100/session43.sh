#!/usr/bin/env bash
# GPU session 43 (the machine of session 42, weights still in /root/mp): label smoothing, never
# tried on MPNet. configs/nlbse-mpnet.toml as shipped (three members holding out the same 48
# rows, head_tail 128, 512 tokens, bf16) with train.label_smoothing = 0.1, on held-out splits
# 1-3 of heldout.py. Baseline on these splits (session 41, the same without smoothing): test
# 0.816 / 0.873 / 0.830. The three runs go side by side in a process of their own session; later calls run
# `DIR=/root/s43/results bench/h100/poll.sh`.
set -u
W=/root/s43; . bench/h100/mpnet_setup.sh
cp configs/nlbse-mpnet.toml bench/h100/combine.py $W/
H=$W/heldout; mkdir -p $H
python3 bench/h100/heldout.py "$W/issues_train.csv" "$H" 1 2 3
wc -l $H/*.csv > $R/heldout_files.txt
rm -rf /dev/shm/nl_*
nvidia-smi -L > $R/nvidia-smi.txt 2>&1
cat > $W/run.sh <<RUN
#!/usr/bin/env bash
export HF_HUB_OFFLINE=1
cd $W
for split in 1 2 3; do
  ( t0=\$SECONDS; name=ls_\$split
    $W/bin/nlbse --device cuda --config $W/nlbse-mpnet.toml --ensemble 3 --test $H/test_\$split.csv \
      --set model.path=$M --set data.train=\"$H/train_\$split.csv\" --set data.split_seed=\$split \
      --set train.seed=42 --set train.precision=bf16 --set train.label_smoothing=0.1 \
      --out /dev/shm/nl_\$name --json > $R/heldout_\$name.txt 2> $R/heldout_\$name.log
    echo "rc \$? wall \$((SECONDS - t0)) s" >> $R/heldout_\$name.txt
    mkdir -p $R/pred_\$name
    cp /dev/shm/nl_\$name/nlbse.json $R/heldout_\$name.json
    for p in /dev/shm/nl_\$name/*/test_predictions*; do
      mkdir -p $R/pred_\$name/\$(basename \$(dirname \$p)); cp \$p $R/pred_\$name/\$(basename \$(dirname \$p))/
    done ) &
done
projects="facebook__react tensorflow__tensorflow microsoft__vscode bitcoin__bitcoin opencv__opencv"
while [ -n "\$(jobs -r)" ]; do
  sleep 20
  for d in /dev/shm/nl_*; do
    prev=""
    for p in \$projects; do [ -d \$d/\$p ] && [ -n "\$prev" ] && rm -rf \$d/\$prev/seed-*; prev=\$p; done
  done
  echo "\$(date +%T) \$(df -h /dev/shm | tail -1) \$(nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader)" >> $R/timeline.txt
done
echo "\$(date +%T) done" >> $R/timeline.txt
touch $R/DONE
RUN
chmod +x $W/run.sh
setsid nohup $W/run.sh > $W/run.out 2>&1 < /dev/null &
echo "started $(date +%T)" >> $R/timeline.txt
# Stay in the call while the runs go, so the machine is held; poll.sh takes over after.
DIR=$R bash bench/h100/poll.sh ${WAIT:-540}
