#!/usr/bin/env bash
# Run every benchmark in benchmarks/ and print the table of headline ratios for the README,
# followed by each benchmark's own report (its markdown tables, passed through).
#
#   bash benchmarks/run_all.sh [--quick] [--only generation,sft,http,distill,grpo,select,compose] [--out DIR]
#
# Default settings finish in about 10-15 minutes on 2 CPU cores with nothing else running; --quick
# runs each benchmark in its smallest form (a minute or two in all) to check that they still run:
# its ratios are not worth quoting, and the bars some benchmarks check may be missed at that size.
# Each benchmark's report (stdout) goes to DIR/<name>.out and its stderr to DIR/<name>.log
# (default DIR: a new temporary directory).
# Exit status: 0 when every benchmark exited 0 (each one exits 1 when it misses its own bar).
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-.venv/bin/python}
QUICK=0
ONLY=""
OUT=""
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) QUICK=1 ;;
        --only) ONLY=${2:?--only needs a comma-separated list}; shift ;;
        --out) OUT=${2:?--out needs a directory}; shift ;;
        -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "error: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
# Every benchmark run_all.sh has settings for, in this order, if its script is there.
KNOWN="generation sft http distill grpo select compose"
script_for() {
    case "$1" in
        http) echo benchmarks/bench_http_teacher.py ;;
        *) echo "benchmarks/bench_$1.py" ;;
    esac
}

ALL=""
for name in $KNOWN; do
    [ -f "$(script_for "$name")" ] && ALL="$ALL $name"
done
ALL=${ALL# }
# a benchmark added without settings here is named in the output, not silently skipped
UNKNOWN=""
for f in benchmarks/bench_*.py; do
    name=$(basename "$f" .py)
    name=${name#bench_}
    [ "$name" = http_teacher ] && name=http
    case " $KNOWN " in *" $name "*) ;; *) UNKNOWN="$UNKNOWN $f" ;; esac
done
for name in ${ONLY//,/ }; do
    case " $ALL " in *" $name "*) ;; *) echo "error: --only: no benchmark '$name' (have: ${ALL// /, })" >&2; exit 2 ;; esac
done
if [ ! -x "$PYTHON" ]; then
    echo "error: $PYTHON not found: run ./setup.sh first, or set PYTHON" >&2
    exit 2
fi
OUT=${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/r1v3-bench-XXXXXX")}
mkdir -p "$OUT" || exit 2

# The server limit of the HTTP teacher benchmark: its headline is the speedup at this concurrency.
if [ "$QUICK" = 1 ]; then HTTP_LIMIT=4; else HTTP_LIMIT=8; fi

# Each benchmark's settings: the full ones are sized for 2 cores, the quick ones just exercise the code.
args_for() {
    local full quick
    case "$1" in
        generation) full="--items 120 --batch-size 16 --max-new-tokens 32 --repeat 2"
                    quick="--items 16 --batch-size 8 --max-new-tokens 8" ;;
        sft)        full="--steps 8 --n 200 --modes connector,connector+llm,all"
                    quick="--steps 2 --n 40 --modes connector,all" ;;
        http)       full="--service-ms 50 --limit $HTTP_LIMIT --requests 80 --concurrency 1,2,4,8,16"
                    quick="--service-ms 20 --limit $HTTP_LIMIT --requests 16 --concurrency 1,2,4" ;;
        distill)    full="--problems 48 --samples 2 --batch-size 16 --max-new-tokens 48"
                    quick="--problems 8 --samples 1 --batch-size 8 --max-new-tokens 8" ;;
        grpo)       full="--steps 6 --repeats 3 --rows 16"
                    quick="--steps 2 --repeats 1 --rows 4 --samples 2" ;;
        select)     full="--rows 32 --samples 2 --max-new-tokens 48 --batch-size 16"
                    quick="--rows 4 --samples 1 --max-new-tokens 8 --batch-size 4" ;;
        compose)    full=""; quick="" ;;  # its size is the smol model's
    esac
    if [ "$QUICK" = 1 ]; then echo "$quick"; else echo "$full"; fi
}

what_for() {
    case "$1" in
        generation) echo "eval generation: batched vs one generate() per item (items/s)" ;;
        sft)        echo "full SFT (all) vs connector-only: peak RSS, s/step" ;;
        http)       echo "HTTP teacher: requests/s at concurrency $HTTP_LIMIT vs 1" ;;
        distill)    echo "local teacher: batched vs one request at a time (outputs/s)" ;;
        grpo)       echo "r1v3 rl vs bare TRL GRPOTrainer (s/step); difficulty batched vs one at a time (rows/s)" ;;
        select)     echo "select-ckpt scoring vs generation alone (time)" ;;
        compose)    echo "compose: peak RSS above what the libraries take on import, vs the composed model's weight bytes (goal 1.3x)" ;;
    esac
}

# A markdown table cell: column $2 (1-based, as printed) of the first row of $1 matching $3.
cell() {
    grep -E "$3" "$1" | head -1 | awk -F'|' -v c="$(($2 + 1))" '{gsub(/^ +| +$/, "", $c); print $c}'
}

# The headline ratio, read from what the benchmark printed; empty if it printed none.
headline() {
    local log=$OUT/$1.out main=""
    case "$1" in
        generation) main=$(cell "$log" 4 '^\| [^|]*batched')
                    [ -n "$main" ] && echo "$main ($(cell "$log" 5 '^\| [^|]*batched') predictions identical)" ;;
        sft)        main=$(cell "$log" 5 '^\| all \|')
                    [ -n "$main" ] && echo "$main peak RSS, $(cell "$log" 6 '^\| all \|') s/step" ;;
        http)       main=$(cell "$log" 4 "^\\| $HTTP_LIMIT \\|")
                    [ -n "$main" ] && echo "$main (bar $(cell "$log" 5 "^\\| $HTTP_LIMIT \\|"): $(grep -oE '^bar (met|MISSED at c=[0-9,]+)' "$log" | sed 's/^bar //'))" ;;
        distill)    grep -oE '^batched / one at a time: [0-9.]+x' "$log" | sed 's/.*: //' ;;
        grpo)       main=$(grep -oE '^r1v3 rl / bare: [0-9.]+x' "$log" | sed 's/.*: //')
                    [ -n "$main" ] && echo "$main (limit 1.05x); difficulty $(grep -oE '^batched / one at a time: [0-9.]+x' "$log" | sed 's/.*: //')" ;;
        select)     grep -oE '^ratio scoring / generation: .*' "$log" | sed 's/^ratio scoring \/ generation: //' ;;
        compose)    grep -oE '^compose --llm llm: .*' "$log" | grep -oE '[0-9.]+x output' | tail -1 ;;
    esac
}

# A benchmark's report from its stdout: its first markdown table with the line that introduces
# it, and everything after; the output of the stages it drives (progress, rich tables) before that
# is left out. A report without a table is printed whole.
report() {
    awk '{ line[NR] = $0 } /^\|/ && !first { first = NR }
         END {
             if (!first) { for (i = 1; i <= NR; i++) print line[i]; exit }
             for (c = first - 1; c > 0 && line[c] ~ /^[[:space:]]*$/; c--) ;
             if (c > 0) { print line[c]; print "" }
             for (i = first; i <= NR; i++) print line[i]
         }' "$1"
}

selected=()
for name in $ALL; do
    if [ -z "$ONLY" ] || [[ ",$ONLY," == *",$name,"* ]]; then selected+=("$name"); fi
done

declare -A CODE TOOK
failed=0
i=0
started=$SECONDS
for name in "${selected[@]}"; do
    i=$((i + 1))
    read -r -a settings <<<"$(args_for "$name")"
    echo "[$i/${#selected[@]}] $name: python $(script_for "$name") ${settings[*]}" >&2
    t0=$SECONDS
    # stdout is the benchmark's report; stderr (progress, library warnings) only goes to the log
    "$PYTHON" "$(script_for "$name")" "${settings[@]}" >"$OUT/$name.out" 2>"$OUT/$name.log"
    CODE[$name]=$?
    TOOK[$name]=$((SECONDS - t0))
    [ "${CODE[$name]}" = 0 ] || failed=1
    echo "    exit ${CODE[$name]} after ${TOOK[$name]} s (stderr: $OUT/$name.log)" >&2
done

mode=$([ "$QUICK" = 1 ] && echo "quick settings: not for quoting" || echo "full settings")
commit=$(git rev-parse --short HEAD 2>/dev/null || echo '?')
git diff --quiet HEAD -- r1v3 stages benchmarks 2>/dev/null || commit="$commit with uncommitted changes"
echo "## Benchmarks: $(date -u +%Y-%m-%d), $(nproc) CPUs, commit $commit, $mode, $((SECONDS - started)) s in all"
echo
echo "| benchmark | compares | headline ratio | exit | seconds |"
echo "|---|---|---|---:|---:|"
for name in "${selected[@]}"; do
    ratio=$(headline "$name")
    echo "| $name | $(what_for "$name") | ${ratio:-?} | ${CODE[$name]} | ${TOOK[$name]} |"
done
for f in $UNKNOWN; do
    echo "| $f | not run: run_all.sh has no settings for it | | | |"
done
for name in "${selected[@]}"; do
    echo
    echo "### $name"
    echo
    echo "\`python $(script_for "$name") $(args_for "$name")\`"
    echo
    report "$OUT/$name.out"
    if [ "${CODE[$name]}" != 0 ]; then
        echo
        echo "exit ${CODE[$name]}; last lines of $OUT/$name.log:"
        tail -n 5 "$OUT/$name.log" | sed 's/^/    /'
    fi
done
exit $failed
