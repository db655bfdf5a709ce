#!/usr/bin/env bash
# The test command: installs what is missing, builds, runs every test suite.
# QT_SAN=1 adds the AddressSanitizer/UndefinedBehaviorSanitizer build and its tests.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/deps.sh
make -j"$(nproc)"
exec ./tests/run.sh
