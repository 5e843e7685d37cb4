#!/usr/bin/env bash
# Installs what building and testing kowalski needs on Debian 12, and nothing
# that is already there. Idempotent; never prompts.
set -euo pipefail

packages=(g++ cmake ninja-build pkg-config ccache
          libcaf-dev libboost-dev libboost-test-dev libsimdjson-dev liblmdb-dev
          libspdlog-dev libssl-dev libhnswlib-dev
          bubblewrap python3)
# Benchmarks compare against these peers; install with KOWALSKI_BENCH=1.
if [[ "${KOWALSKI_BENCH:-0}" == "1" ]]; then
  packages+=(wrk nginx-light python3 python3-aiohttp nodejs)
fi

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
  echo "setup: all ${#packages[@]} packages present"
  exit 0
fi

sudo=""
if [[ $(id -u) -ne 0 ]]; then
  sudo="sudo"
fi
echo "setup: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
