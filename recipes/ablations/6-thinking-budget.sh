#!/usr/bin/env bash
# Finding 6 (Skywork-R1V3 sections 6.2-6.3): thinking modes and budget. MMMU: slow thinking 76.0, NoThink 68.9,
# NoWait (Wait / Alternatively / Hmm banned while decoding) 74.1; a budget of 1K..16K tokens 61.6 .. 76.0.
# Ours: the reflective cold start (START) and the RL model (`rl --curriculum hard`, seed 0, shared with
# findings 1-4), each on the same EVAL_N held-out items: slow thinking (the reasoning prompt, greedy,
# MAX_NEW tokens), NoThink (the benchmark's direct-answer prompt: `--style official`), NoWait
# (`eval mmmu --ban-words Wait,Alternatively,Hmm`: a decoding constraint); and a budget sweep of
# `--max-new-tokens` (BUDGETS) drawn as a curve with chance and the blind score (OUT/budget.png).
# Evals only: greedy decoding has no seed, so one run is the measurement.
#
# Usage: bash recipes/ablations/6-thinking-budget.sh   (after recipes/smol-signal.sh; knobs: lib.sh and below)
# Knobs: BUDGETS ("16 32 64 128"; MAX_NEW's eval is shared with the other findings), BAN (Wait,Alternatively,Hmm),
#   MODELS ("start rl"; "start" measures the cold start alone and trains nothing).
# Time on 2 cores at the defaults: ~2.7 h; ~1.9 h when the RL run and the 64-token evals are reused (the other
# findings). Per model: two mode evals of 1200 items, ~12 min each, and the budget sweep, about 0.25 + 0.5 + 2
# times a 64-token eval (~12 min): ~33 min; the start's two evals and GRPO (~11 min) once.
FINDING=6
source "$(dirname "$0")/lib.sh"
BUDGETS=${BUDGETS:-16 32 64 128}
BAN=${BAN:-Wait,Alternatively,Hmm}
MODELS=${MODELS:-start rl}
for m in $MODELS; do
    [[ $m == start || $m == rl ]] || { echo "error: MODELS holds '$m': use start, rl or both" >&2; exit 2; }
done
# the flag is a decoding constraint in eval; an r1v3 without it cannot run this finding: said now
# (the help is read whole: `| grep -q` would close the pipe early, and pipefail would call that a failure)
[[ $($R1V3 eval mmmu --help) == *--ban-words* ]] || {
    echo "error: this r1v3 has no \`eval mmmu --ban-words\`: the NoWait mode cannot be run" >&2
    exit 2
}

problems
start_evals
declare -A MODEL=([start]=$START) SLOW=([start]=rl-start)
answers=(rl-start think-start-nothink think-start-nowait)
if [[ " $MODELS " == *" rl "* ]]; then
    rl_arm hard 0
    MODEL[rl]=$RL_NAME-final SLOW[rl]=$RL_NAME-eval
    answers+=("$RL_NAME-eval" think-rl-nothink think-rl-nowait)
fi
series=()
for m in $MODELS; do
    seed=0  # the RL model's seed; the start is one fixed model decoded greedily: no seed to vary
    [ "$m" = start ] && seed=-
    evaluate "${MODEL[$m]}" "${SLOW[$m]}"
    STYLE=official evaluate "${MODEL[$m]}" "think-$m-nothink"
    evaluate "${MODEL[$m]}" "think-$m-nowait" --ban-words "$BAN"
    compare_json "$m.json" "${SLOW[$m]}" "think-$m-nothink" "think-$m-nowait"
    claim "$m.json" "think-$m-nothink" "$seed" - "NoThink vs slow thinking ($m model)" "76.0 -> 68.9 (-7.1)"
    claim "$m.json" "think-$m-nowait" "$seed" - "NoWait vs slow thinking ($m model)" "76.0 -> 74.1 (-1.9)"
    budget=()
    for b in $BUDGETS; do
        if [ "$b" = "$MAX_NEW" ]; then
            budget+=("${SLOW[$m]}")
        else
            MAX_NEW=$b evaluate "${MODEL[$m]}" "budget-$m-$b"
            budget+=("budget-$m-$b")
        fi
    done
    compare_json "budget-$m.json" "${budget[0]}" "${budget[-1]}"
    claim "budget-$m.json" "${budget[-1]}" "$seed" + "largest vs smallest budget ($m model)" "1K -> 16K: 61.6 -> 76.0 (+14.4)"
    series+=("$m=$(IFS=,; echo "${budget[*]}")")
done
echo
echo "== accuracy against the budget (max new tokens) =="
ablations budget "$OUT/budget.png" "${series[@]}" --blind rl-start-blind
echo
echo "== the answers: length, truncation, critical words (NoWait should say none) =="
ablations repetition "${answers[@]}"
findings_table
