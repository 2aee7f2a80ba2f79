#!/usr/bin/env bash
# Debian packages saeflow needs on a developer or CI machine:
#  - fortunes, fortunes-min: the offline English training corpus (fortune-mod data; see
#    gpu_worker/corpus.py for provenance and licence)
#  - chromium: headless browser for the report's rendering test
set -euo pipefail
need=()
[ -f /usr/share/games/fortunes/fortunes ] || need+=(fortunes-min)
[ -f /usr/share/games/fortunes/computers ] || need+=(fortunes)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
[ ${#need[@]} -eq 0 ] && exit 0
sudo_cmd=()
[ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
"${sudo_cmd[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq "${need[@]}"
