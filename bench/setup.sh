#!/usr/bin/env bash
# Installs what `make bench` runs, when missing (Debian): wrk, redis-server with
# redis-benchmark and redis-cli, taskset, and perf for the profiles (optional: without
# it the report has no profile section).
set -euo pipefail

sudo=""
if [[ $(id -u) -ne 0 ]]; then sudo="sudo"; fi

missing=()
need() { command -v "$1" >/dev/null || missing+=("$2"); }
need wrk wrk
need redis-server redis-server
need redis-benchmark redis-tools
need redis-cli redis-tools
need taskset util-linux
need getconf libc-bin
need perf linux-perf
if (( ${#missing[@]} )); then
  # shellcheck disable=SC2207 # one package per word
  unique=($(printf '%s\n' "${missing[@]}" | sort -u))
  echo "bench: installing ${unique[*]}"
  $sudo apt-get update -q
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${unique[@]}" \
    || echo "bench: apt-get could not install all of ${unique[*]}" >&2
fi
for tool in wrk redis-server redis-benchmark redis-cli taskset getconf; do
  command -v "$tool" >/dev/null || { echo "bench: $tool is required" >&2; exit 1; }
done
