#!/usr/bin/env bash
# Publish the asv dashboard, serve it on 127.0.0.1 only, and screenshot it with headless Chromium.
#
#   benchmarks/screenshot.sh [OUT.png] [PAGE] [WIDTHxHEIGHT]
#
# OUT.png defaults to docs/benchmarks-dashboard.png; PAGE is the part of the dashboard's URL
# after the host, e.g. '#conv2d.Conv2D.time_execute' (default: the summary page). Needs saved
# results (benchmarks/run.sh run, or range) and Chromium: apt-get update && apt-get install -y chromium
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="$(realpath -m "${1:-$here/../docs/benchmarks-dashboard.png}")"
page="${2:-}"
size="${3:-1400x1000}"
chromium="${CHROMIUM:-$(command -v chromium || command -v chromium-browser || true)}"
[ -n "$chromium" ] || { echo "chromium not found: apt-get update && apt-get install -y chromium" >&2; exit 2; }

cd "$here"
python -m asv publish > /dev/null
python vendor_dashboard.py .asv/html --strict  # the page's libraries, local: Chromium gets no network
[ -f .asv/html/index.html ] || { echo "no dashboard: run benchmarks/run.sh run (or range) first" >&2; exit 2; }

port=$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
python -m http.server --bind 127.0.0.1 --directory .asv/html "$port" > /dev/null 2>&1 &
server=$!
profile=$(mktemp -d)
trap 'kill "$server" 2> /dev/null || true; rm -rf "$profile"' EXIT
for _ in $(seq 50); do  # wait for the server, at most 5 s
  python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/index.html', timeout=1)" 2> /dev/null && break
  sleep 0.1
done

# --virtual-time-budget lets the dashboard's JavaScript load the results and draw before the shot.
timeout 120 "$chromium" --headless --no-sandbox --disable-gpu --disable-background-networking \
  --disable-component-update --disable-sync --no-first-run --user-data-dir="$profile" \
  --hide-scrollbars --virtual-time-budget=20000 --window-size="${size/x/,}" \
  --screenshot="$out" "http://127.0.0.1:$port/$page" 2> "$profile/chromium.log" \
  || { cat "$profile/chromium.log" >&2; exit 1; }
[ -s "$out" ] || { cat "$profile/chromium.log" >&2; echo "no screenshot written" >&2; exit 1; }
echo "$out"
