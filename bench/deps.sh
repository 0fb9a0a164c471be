#!/usr/bin/env bash
# Install the tools `make bench` compares rsp with: wrk, ab (apache2-utils),
# HAProxy, nginx and nginx's stream module. Debian/Ubuntu only, needs root.
#
# Installing nginx or haproxy normally starts a system service listening on
# port 80 (nginx). The benchmark runs its own copies in the foreground with its
# own configs, so we forbid service starts during the install with a
# policy-rc.d that answers 101 ("action forbidden"), unless one is already there.
set -euo pipefail

packages=(wrk apache2-utils haproxy nginx libnginx-mod-stream)
command -v python3 >/dev/null || packages+=(python3)  # bench.py: standard library only

if ! command -v apt-get >/dev/null; then
    echo "bench-deps: apt-get not found; install these by hand: ${packages[*]}" >&2
    exit 1
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi

policy=/usr/sbin/policy-rc.d
made_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n# temporary, from rsp bench/deps.sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
    $sudo chmod 755 "$policy"
    made_policy=1
fi
cleanup() { if [ "$made_policy" = 1 ]; then $sudo rm -f "$policy"; fi; }
trap cleanup EXIT

export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${packages[@]}"

# Belt and braces: if a service manager started them anyway, stop and disable them.
if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    for svc in nginx haproxy; do
        $sudo systemctl disable --now "$svc" >/dev/null 2>&1 || true
    done
fi
echo "bench-deps: installed ${packages[*]}"
