#!/usr/bin/env bash
# Make sure the tools the test suite uses besides Python are installed:
# - kcat, a Kafka client that is not ours (librdkafka), reads our events back in the
#   integration tests;
# - prometheus and promtool (Debian's `prometheus` package): a real Prometheus scrapes a
#   running worker in tests/integration/test_prometheus.py, and `make obs-check` runs
#   promtool on the alert rules. Debian's own prometheus service is not used (the test
#   starts its own instance on a free port).
set -euo pipefail

missing=()
command -v kcat >/dev/null 2>&1 || missing+=(kcat)
if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
  missing+=(prometheus)
fi
if [ "${#missing[@]}" -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "tools: installing ${missing[*]} from Debian's packages" >&2
  if ! apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1; then
    apt-get update -qq >/dev/null
    apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  exit 0
fi
echo "tools: ${missing[*]} missing; install (Debian/Ubuntu: sudo apt-get install" \
  "${missing[*]}; macOS: brew install kcat prometheus) and run again" >&2
exit 1
