#!/usr/bin/env bash
# GPU session 44, third call: session44b.sh's queue ran at most two runs at a time and never started its last two (its
# `jobs -r | wc -l` ran in a subshell that kept finished jobs), so this stops that queue, leaves
# ema0.97_2 running, starts ema0.97_1 and ema0.97_3 directly, and waits for all three.
set -u
W=/root/s44; M=$W/mpnet; H=$W/heldout; R=/root/s44b/results
pkill -o -f run2.sh   # the queue itself (the oldest), not the subshell running ema0.97_2
ps aux | grep "[n]lbse --device" | awk '{print $2, $10, $NF}' > $R/ps_before.txt
nvidia-smi > $R/nvidia-smi-before.txt 2>&1
export HF_HUB_OFFLINE=1
cd $W
for split in 1 3; do
  name=ema0.97_$split
  ( setsid nohup bash -c "t0=\$SECONDS; $W/bin/nlbse --device cuda --config $W/nlbse-mpnet.toml --ensemble 3 \
      --test $H/test_$split.csv --set model.path=$M --set data.train=\"$H/train_$split.csv\" \
      --set data.split_seed=$split --set train.seed=42 --set train.precision=bf16 \
      --set train.ema_decay=0.97 --out /dev/shm/nl_$name --json > $R/heldout_$name.txt \
      2> $R/heldout_$name.log; echo \"rc \$? wall \$((SECONDS - t0)) s\" >> $R/heldout_$name.txt; \
      cp /dev/shm/nl_$name/nlbse.json $R/heldout_$name.json; touch $R/DONE_$name" > /dev/null 2>&1 < /dev/null & )
done
end=$((SECONDS + ${WAIT:-540}))
while [ $SECONDS -lt $end ]; do
  n=0; for f in $R/heldout_ema0.97_{1,2,3}.txt; do grep -q "test  macro-F1" $f 2>/dev/null && n=$((n+1)); done
  [ $n -eq 3 ] && break
  echo "$(date +%T) $(nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader) $(grep -c 'eval step' $R/heldout_ema0.97_*.log | tr '\n' ' ')" >> $R/timeline.txt
  sleep 15
done
grep -h "macro-F1\|^rc" $R/heldout_ema0.97_*.txt
tar czf "$OUT/results.tgz" -C /root/s44b results
