#!/usr/bin/env bash
# Install what deltagrad needs from Debian 12's packages (only what is missing).
set -euo pipefail
pkgs=(g++ meson ninja-build pkg-config libeigen3-dev doctest-dev libstb-dev nlohmann-json3-dev zlib1g-dev
      libopenblas-dev libdnnl-dev dataset-fashion-mnist libopenmpi-dev openmpi-bin)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "installing: ${missing[*]}"
sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
