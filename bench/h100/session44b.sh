#!/usr/bin/env bash
# GPU session 44, second call: in the first (session44.sh) only ema0.9_2 ran; six MPNet
# processes side by side ran out of the H100's 80 GB (about 20 GB each), and the other five
# stopped at their first allocation. Here the five again, at most three at a time, reusing the
# first call's binary, weights and splits in /root/s44.
set -u
W=/root/s44; M=$W/mpnet; H=$W/heldout
R=/root/s44b/results; mkdir -p $R
rm -rf /dev/shm/nl_*
cat > $W/run2.sh <<RUN
#!/usr/bin/env bash
export HF_HUB_OFFLINE=1
cd $W
for run in 0.9:1 0.9:3 0.97:2 0.97:1 0.97:3; do
  decay=\${run%:*}; split=\${run#*:}
  while [ \$(jobs -r | wc -l) -ge 3 ]; do sleep 5; done
  ( t0=\$SECONDS; name=ema\${decay}_\$split
    $W/bin/nlbse --device cuda --config $W/nlbse-mpnet.toml --ensemble 3 --test $H/test_\$split.csv \
      --set model.path=$M --set data.train=\"$H/train_\$split.csv\" --set data.split_seed=\$split \
      --set train.seed=42 --set train.precision=bf16 --set train.ema_decay=\$decay \
      --out /dev/shm/nl_\$name --json > $R/heldout_\$name.txt 2> $R/heldout_\$name.log
    echo "rc \$? wall \$((SECONDS - t0)) s" >> $R/heldout_\$name.txt
    mkdir -p $R/pred_\$name
    cp /dev/shm/nl_\$name/nlbse.json $R/heldout_\$name.json
    for p in /dev/shm/nl_\$name/*/test_predictions*; do
      mkdir -p $R/pred_\$name/\$(basename \$(dirname \$p)); cp \$p $R/pred_\$name/\$(basename \$(dirname \$p))/
    done
    rm -rf /dev/shm/nl_\$name ) &
done
while [ -n "\$(jobs -r)" ]; do
  sleep 20
  for d in /dev/shm/nl_*; do
    prev=""
    for p in facebook__react tensorflow__tensorflow microsoft__vscode bitcoin__bitcoin opencv__opencv; do
      [ -d \$d/\$p ] && [ -n "\$prev" ] && rm -rf \$d/\$prev/seed-*; prev=\$p
    done
  done
  echo "\$(date +%T) \$(df -h /dev/shm | tail -1) \$(nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader)" >> $R/timeline.txt
done
echo "\$(date +%T) done" >> $R/timeline.txt
touch $R/DONE
RUN
chmod +x $W/run2.sh
setsid nohup $W/run2.sh > $W/run2.out 2>&1 < /dev/null &
echo "started $(date +%T)" >> $R/timeline.txt
DIR=$R bash bench/h100/poll.sh ${WAIT:-540}
