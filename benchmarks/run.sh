#!/usr/bin/env bash
# convengine's benchmark workflows (asv); docs/benchmarks.md explains each one.
#
#   benchmarks/run.sh check                    asv check: every benchmark imports and is well-formed
#   benchmarks/run.sh quick [REGEX]            run each benchmark once, nothing saved (smoke test)
#   benchmarks/run.sh run [REGEX]              the current checkout, in this Python, saved under HEAD
#   benchmarks/run.sh range A..B [REGEX]       every commit of a range, each built in its own virtualenv
#   benchmarks/run.sh compare A B [FACTOR]     saved results of two commits; exit 1 if one got slower/bigger by > FACTOR
#   benchmarks/run.sh continuous A B [FACTOR [REGEX]]  build, run, compare A and B now; exit 1 on a regression
#   benchmarks/run.sh publish                  build the HTML dashboard from the saved results
#   benchmarks/run.sh preview [PORT]           serve the dashboard on http://127.0.0.1:PORT/ (default 8080)
#   benchmarks/run.sh screenshot [PNG]         publish, serve on 127.0.0.1, screenshot it with headless Chromium
#
# FACTOR defaults to 1.2 (20 %). The gates look at time_ and peakmem_ benchmarks only:
# asv counts every increase as a regression, and for track_gflops a higher value is better.
# Extra asv options go in ASV_ARGS, e.g. ASV_ARGS="--show-stderr" benchmarks/run.sh quick.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"
ASV=${ASV:-"python -m asv"}
read -r -a extra <<< "${ASV_ARGS:-}"
GATED='^(conv2d|models)\.\w+\.(time|peakmem)_'

usage() { sed -n '2,16p' "$here/run.sh" | sed 's/^# \{0,1\}//'; }

need_machine() {  # asv wants a description of this machine in ~/.asv-machine.json; take the defaults
  [ -f "${HOME}/.asv-machine.json" ] || $ASV machine --yes > /dev/null
}

bench_args() {  # "--bench REGEX" when a regex is given
  if [ -n "${1:-}" ]; then printf -- '--bench\n%s\n' "$1"; fi
}

cmd=${1:-help}
shift || true
case "$cmd" in
  check)
    $ASV check --environment existing "${extra[@]}"
    ;;
  quick)
    need_machine
    mapfile -t b < <(bench_args "${1:-}")
    $ASV run --environment existing --quick --dry-run --show-stderr "${b[@]}" "${extra[@]}"
    ;;
  run)
    need_machine
    mapfile -t b < <(bench_args "${1:-}")
    # Results are filed under HEAD; uncommitted changes in the checkout are measured too.
    $ASV run --environment existing --set-commit-hash "$(git rev-parse HEAD)" "${b[@]}" "${extra[@]}"
    ;;
  range)
    [ $# -ge 1 ] || { echo "usage: $0 range A..B [REGEX]" >&2; exit 2; }
    need_machine
    mapfile -t b < <(bench_args "${2:-}")
    $ASV run "$1" --skip-existing-commits "${b[@]}" "${extra[@]}"
    ;;
  compare)
    [ $# -ge 2 ] || { echo "usage: $0 compare A B [FACTOR]" >&2; exit 2; }
    need_machine
    out=$(mktemp)
    trap 'rm -f "$out"' EXIT
    $ASV compare --factor "${3:-1.2}" --split --only-changed "$1" "$2" "${extra[@]}" | tee "$out"
    # asv compare marks a worse result "+" and a new failure "!", but always exits 0
    if grep -E "^\| (\+ .*\| ${GATED#^}|! )" "$out" > /dev/null; then
      echo "regression: at $2 a time_/peakmem_ benchmark is more than ${3:-1.2}x worse than at $1, or a benchmark fails" >&2
      exit 1
    fi
    ;;
  continuous)
    [ $# -ge 2 ] || { echo "usage: $0 continuous A B [FACTOR [REGEX]]" >&2; exit 2; }
    need_machine
    # REGEX narrows the run (default: every time_ and peakmem_ benchmark); keep track_ out of it
    $ASV continuous --factor "${3:-1.2}" --bench "${4:-$GATED}" "$1" "$2" "${extra[@]}"
    ;;
  publish)
    $ASV publish "${extra[@]}"
    python "$here/vendor_dashboard.py" .asv/html  # its JS/CSS from npm, so it works offline
    ;;
  preview)
    [ -f .asv/html/index.html ] || { $ASV publish && python "$here/vendor_dashboard.py" .asv/html; }
    port=${1:-8080}
    echo "dashboard: http://127.0.0.1:${port}/  (Ctrl-C stops)"
    exec python -m http.server --bind 127.0.0.1 --directory .asv/html "$port"
    ;;
  screenshot)
    exec bash "$here/screenshot.sh" "$@"
    ;;
  help|-h|--help)
    usage
    ;;
  *)
    usage >&2
    exit 2
    ;;
esac
