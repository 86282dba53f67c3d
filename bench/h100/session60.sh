#!/usr/bin/env bash
# GPU session 60 (weights joined from /root/mp, three earlier calls of this machine; an H200, the
# kind that ran session 58): task-adaptive pretraining (TAPT, Gururangan et al. 2020) before the
# shipped pipeline. For each held-out split of SPLITS and each project, `bench/tapt.py` trains
# all-mpnet-base-v2 with masked-language modelling on the project's 240 training rows of that
# split (title and body, first 512 tokens; HEAD_EPOCHS epochs of the fresh masked-LM head alone,
# then EPOCHS epochs of everything at LR, batch 32, bf16 autocast), and the shipped pipeline (both
# configs, three members each, bf16, as `make nlbse-mpnet MATCH_PRIORS=1`) then starts each
# project from its adapted encoder (`--set model.path=$T/<split>/{project}`). Split 13 is also
# run as shipped, to check that this build on this kind repeats session 58 (validation 0.817,
# test 0.863 unmatched): if it does, session 58's figures stand for the other splits.
# The rule, fixed here before the run: the adapted texts include each project's 48 validation
# rows (unlabelled), so TAPT's validation scores are optimistic and the decision rests on the
# held-out test rows, which TAPT never sees: TAPT joins the pipeline if its unmatched test mean
# over the splits run is above the shipped pipeline's on the same splits (session 58, or the
# rerun) by more than the standard error of the split differences; both means are reported
# either way. Later calls run `DIR=/root/s60/results bench/h100/poll.sh`.
set -u
W=/root/s60; . bench/h100/mpnet_setup.sh
SPLITS=${SPLITS:-13 14}
BASELINE=${BASELINE-13}   # BASELINE="" runs no shipped split
EPOCHS=${EPOCHS:-30}; HEAD_EPOCHS=${HEAD_EPOCHS:-3}; LR=${LR:-5e-5}
cp configs/nlbse-mpnet*.toml bench/tapt.py $W/
H=$W/heldout; mkdir -p $H; T=$W/tapt
python3 bench/h100/heldout.py "$W/issues_train.csv" "$H" $SPLITS
wc -l $H/*.csv > $R/heldout_files.txt
{ nvidia-smi -L; python3 -c "import torch, transformers, tokenizers, safetensors as s; \
print('torch', torch.__version__, 'transformers', transformers.__version__, 'tokenizers', \
tokenizers.__version__, 'safetensors', s.__version__)"; } > $R/versions.txt 2>&1
rm -rf /dev/shm/nl_*
projects="facebook/react tensorflow/tensorflow microsoft/vscode bitcoin/bitcoin opencv/opencv"
pipeline() {  # name split model-path: one process of the shipped pipeline
  cat <<RUN
  $W/bin/nlbse --device cuda --config $W/nlbse-mpnet.toml --config $W/nlbse-mpnet-lora.toml \\
    --ensemble 3 --match-priors --test $H/test_$2.csv --set model.path=$3 \\
    --set data.train=\\"$H/train_$2.csv\\" --set data.split_seed=$2 --set train.seed=42 \\
    --set train.precision=bf16 --out /dev/shm/nl_$1_$2 --json > $R/heldout_$1_$2.txt 2> $R/heldout_$1_$2.log
  echo "rc \$? wall \$((SECONDS - t0)) s" >> $R/heldout_$1_$2.txt
  cp /dev/shm/nl_$1_$2/nlbse.json $R/heldout_$1_$2.json
  for p in /dev/shm/nl_$1_$2/*/test_predictions* /dev/shm/nl_$1_$2/*/valid_predictions*; do
    d=$R/pred_$1_$2/\$(basename \$(dirname \$p)); mkdir -p \$d; cp \$p \$d/
  done
RUN
}
{
  echo '#!/usr/bin/env bash'
  echo 'export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1'
  echo "cd $W"
  for split in $BASELINE; do
    echo "( t0=\$SECONDS"; pipeline shipped $split $M; echo ") &"
  done
  for split in $SPLITS; do
    echo "( t0=\$SECONDS"
    for p in $projects; do
      slug=${p/\//__}
      echo "  python3 $W/tapt.py --model $M --train $H/train_$split.csv --project $p --out $T/$split/$slug \\"
      echo "    --epochs $EPOCHS --head-epochs $HEAD_EPOCHS --lr $LR --amp > $R/tapt_${split}_$slug.txt 2> $R/tapt_${split}_$slug.log"
      echo "  cp $T/$split/$slug/tapt.json $R/tapt_${split}_$slug.json"
    done
    echo "  echo \"\$(date +%T) tapt $split done\" >> $R/timeline.txt"
    pipeline tapt $split "$T/$split/{project}"
    echo ") &"
  done
  cat <<'RUN'
projects="facebook__react tensorflow__tensorflow microsoft__vscode bitcoin__bitcoin opencv__opencv"
while [ -n "$(jobs -r)" ]; do
  sleep 20
  for d in /dev/shm/nl_*; do
    prev=""
    for p in $projects; do [ -d $d/$p ] && [ -n "$prev" ] && rm -rf $d/$prev/*seed-*; prev=$p; done
  done
RUN
  echo "  echo \"\$(date +%T) \$(df -h /dev/shm | tail -1) \$(nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader)\" >> $R/timeline.txt"
  echo done
  echo "echo \"\$(date +%T) done\" >> $R/timeline.txt"
  echo "touch $R/DONE"
} > $W/run.sh
chmod +x $W/run.sh
cp $W/run.sh $R/run.sh
setsid nohup $W/run.sh > $W/run.out 2>&1 < /dev/null &
echo "started $(date +%T)" >> $R/timeline.txt
DIR=$R bash bench/h100/poll.sh ${WAIT:-540}
