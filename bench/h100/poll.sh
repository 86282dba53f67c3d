#!/usr/bin/env bash
# Waits up to $1 seconds (default 570) for a run started in its own session (session31.sh) to
# write $DIR/DONE, then brings $DIR back as $OUT/results.tgz. DIR defaults to /root/s31/results.
DIR=${DIR:-/root/s31/results}
end=$((SECONDS + ${1:-570}))
while [ ! -f "$DIR/DONE" ] && [ $SECONDS -lt $end ]; do sleep 10; done
tail -3 "$DIR/timeline.txt"; grep -h "macro-F1\|^rc" "$DIR"/*.txt 2>/dev/null
tar czf "$OUT/results.tgz" -C "$(dirname "$DIR")" "$(basename "$DIR")"
