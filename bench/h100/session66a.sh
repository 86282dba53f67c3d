#!/usr/bin/env bash
# GPU session 66, first call: leaves the first xz piece of MiniLM's weights on the machine
# (/root/mini/part0) for session66.sh, which must follow within the machine's idle time.
set -eu
mkdir -p /root/mini; cp .carry/s66/part0 /root/mini/part0; ls -la /root/mini; nvidia-smi -L
