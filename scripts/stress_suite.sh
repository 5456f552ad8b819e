#!/usr/bin/env bash
# Run the whole suite from a fresh clone, N times, optionally under K busy CPU hogs: the way CI
# runs it (right after a session, on a busy 2-core machine), to find a test that fails by chance
# before CI does.
#
#   scripts/stress_suite.sh [-n RUNS] [-k HOGS] [-f] [-r REF] [-- PYTEST ARGS...]
#
#   -n RUNS  how many runs (default 3)
#   -k HOGS  busy-loop processes burning CPU during every run (default 0); started and stopped here
#   -f       a fresh clone for every run (default: one fresh clone; its first run installs, like CI)
#   -r REF   what to clone (default HEAD of this checkout: commit first, uncommitted work is not run)
#   after --  arguments for pytest instead of the whole suite (e.g. -- tests/test_bench.py -x)
#
# Per run it prints the pytest summary line, every failed test and the wall time; the exit status
# is the number of failed runs (0: all passed). Logs stay in the printed folder.
set -uo pipefail

runs=3 hogs=0 fresh_each=0 ref=HEAD
while getopts "n:k:fr:h" opt; do
  case $opt in
    n) runs=$OPTARG ;;
    k) hogs=$OPTARG ;;
    f) fresh_each=1 ;;
    r) ref=$OPTARG ;;
    *) sed -n '2,15p' "$0"; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
[[ "${1:-}" == "--" ]] && shift
pytest_args=("$@")

repo=$(cd "$(dirname "$0")/.." && pwd)
commit=$(git -C "$repo" rev-parse --verify "$ref^{commit}") || { echo "stress_suite: no commit $ref" >&2; exit 2; }
work=$(mktemp -d /tmp/stress-suite.XXXXXX)
hog_pids=()

stop_hogs() {
  for pid in "${hog_pids[@]}"; do kill "$pid" 2>/dev/null; done
  for pid in "${hog_pids[@]}"; do wait "$pid" 2>/dev/null; done
  hog_pids=()
}
trap 'stop_hogs' EXIT
trap 'stop_hogs; exit 130' INT TERM

clone() {  # a clean clone of $commit at $1, as CI makes it
  git clone --quiet --no-hardlinks "$repo" "$1" && git -C "$1" checkout --quiet "$commit"
}

echo "stress_suite: $runs run(s) of ${commit:0:10}, $hogs CPU hog(s), logs in $work"
failed_runs=0
for ((i = 1; i <= runs; i++)); do
  dir=$work/clone
  if ((fresh_each)) || [[ ! -d $dir ]]; then
    rm -rf "$dir"
    if ! clone "$dir"; then echo "stress_suite: clone failed" >&2; exit 2; fi
  fi
  for ((h = 0; h < hogs; h++)); do
    ( while :; do :; done ) &
    hog_pids+=($!)
  done
  log=$work/run-$i.log
  started=$(date +%s)
  if ((${#pytest_args[@]})); then
    (cd "$dir" && make install >/dev/null && CI=true .venv/bin/python -m pytest -q -p no:cacheprovider "${pytest_args[@]}") >"$log" 2>&1
  else
    (cd "$dir" && CI=true bash .ci/run) >"$log" 2>&1
  fi
  rc=$?
  wall=$(($(date +%s) - started))
  stop_hogs
  summary=$(grep -E '^(=+ )?[0-9]+ (passed|failed)|(passed|failed|error).* in [0-9.]+s' "$log" | tail -1)
  printf 'run %d: exit %d, %dm%02ds wall, %s\n' "$i" "$rc" $((wall / 60)) $((wall % 60)) "${summary:-no summary (see $log)}"
  grep -E '^(FAILED|ERROR) ' "$log" | sed 's/^/    /'
  ((rc != 0)) && failed_runs=$((failed_runs + 1))
done
echo "stress_suite: $failed_runs of $runs run(s) failed"
exit "$failed_runs"
