#!/usr/bin/env bash
# GPU session 46 (weights joined from /root/mp, three earlier calls of this machine; this call
# carries the fourth piece): the supervised contrastive term (train.contrastive_weight, new) on
# the shipped MPNet pipeline (configs/nlbse-mpnet.toml: three members holding out the same 48
# rows, head_tail 128, 512 tokens, bf16), temperature 0.3, with weight 0.5 and 0.9, on held-out
# splits SPLITS (default 1-3) of heldout.py. Run as: the default, then SPLITS="4 5 6" on the same
# machine (before the temperature was a variable, so those runs are named scl<weight>_<split>),
# then on a second machine WEIGHTS=0.5 TEMPERATURE=0.1 SPLITS="1 2 3 4 5 6".
# Baseline on splits 1-3 (session 41, the same without the term): test 0.816 / 0.873 / 0.830,
# validation 0.867 / 0.830 / 0.825. The runs go side by side in a process of their own session;
# later calls run `DIR=/root/s46/results bench/h100/poll.sh`.
set -u
W=/root/s46; . bench/h100/mpnet_setup.sh
SPLITS=${SPLITS:-1 2 3}; WEIGHTS=${WEIGHTS:-0.5 0.9}; TEMPERATURE=${TEMPERATURE:-0.3}
cp configs/nlbse-mpnet.toml $W/
H=$W/heldout; mkdir -p $H
python3 bench/h100/heldout.py "$W/issues_train.csv" "$H" $SPLITS
wc -l $H/*.csv > $R/heldout_files.txt
rm -rf /dev/shm/nl_*
nvidia-smi -L > $R/nvidia-smi.txt 2>&1
cat > $W/run.sh <<RUN
#!/usr/bin/env bash
export HF_HUB_OFFLINE=1
cd $W
for weight in $WEIGHTS; do
for split in $SPLITS; do
  ( t0=\$SECONDS; name=scl\${weight}_t${TEMPERATURE}_\$split
    $W/bin/nlbse --device cuda --config $W/nlbse-mpnet.toml --ensemble 3 --test $H/test_\$split.csv \
      --set model.path=$M --set data.train=\"$H/train_\$split.csv\" --set data.split_seed=\$split \
      --set train.seed=42 --set train.precision=bf16 --set train.contrastive_weight=\$weight \
      --set train.contrastive_temperature=$TEMPERATURE \
      --out /dev/shm/nl_\$name --json > $R/heldout_\$name.txt 2> $R/heldout_\$name.log
    echo "rc \$? wall \$((SECONDS - t0)) s" >> $R/heldout_\$name.txt
    cp /dev/shm/nl_\$name/nlbse.json $R/heldout_\$name.json
    mkdir -p $R/pred_\$name
    for p in /dev/shm/nl_\$name/*/test_predictions*; do
      mkdir -p $R/pred_\$name/\$(basename \$(dirname \$p)); cp \$p $R/pred_\$name/\$(basename \$(dirname \$p))/
    done ) &
done
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
