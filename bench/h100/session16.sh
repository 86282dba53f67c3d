#!/usr/bin/env bash
# GPU session 16: the integration-test binary of the final commit, built with `--features cuda`,
# run on the H100: its five GPU tests run instead of skipping. Carried: .carry/bin/tests.xz.
set -u
xz -dc .carry/bin/tests.xz > /tmp/tests && chmod +x /tmp/tests
nvidia-smi -L
/tmp/tests gpu --nocapture --test-threads 1 2>&1
