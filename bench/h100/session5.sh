#!/usr/bin/env bash
# GPU session 5: the integration-test binary built with `--features cuda` (release), run on the
# H100: its GPU tests (tests/suite/gpu.rs) run instead of skipping. Carried: .carry/bin/tests.xz.
set -u
xz -dc .carry/bin/tests.xz > /tmp/tests && chmod +x /tmp/tests
nvidia-smi -L
/tmp/tests gpu --nocapture --test-threads 1 2>&1
