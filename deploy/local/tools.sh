#!/usr/bin/env bash
# Make sure the tools the test suite uses besides Python are installed: kcat, a Kafka
# client that is not ours (librdkafka), reads our events back in the integration tests.
set -euo pipefail

if command -v kcat >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "tools: installing kcat from Debian's packages" >&2
  if ! apt-get install -y -qq kcat >/dev/null 2>&1; then
    apt-get update -qq >/dev/null
    apt-get install -y -qq kcat >/dev/null
  fi
  exit 0
fi
echo "tools: kcat is missing; install it (Debian/Ubuntu: sudo apt-get install kcat," \
  "macOS: brew install kcat) and run again" >&2
exit 1
