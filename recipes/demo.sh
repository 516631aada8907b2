#!/usr/bin/env bash
# The recipe on the embedded defaults, on a laptop CPU: every stage that has landed so far.
# Usage: bash recipes/demo.sh   (after ./setup.sh; R1V3_STORE picks the store, default: the repository's artifacts/)
source "$(dirname "$0")/lib.sh"

# 1. The smol VLM: SmolLM2-135M-Instruct + a small vision tower + a fresh connector.
$R1V3 init smol --name smol
# 2. Synthetic visual reasoning problems with captions for a text-only teacher.
$R1V3 data synth --name shapes --n 500 --seed 0
$R1V3 data show shapes --n 3 --sheet "$R1V3_STORE/shapes-contact-sheet.png"
# 3. The untrained baseline on held-out problems, official MMMU prompt and scoring rules.
$R1V3 eval mmmu --model smol --data shapes --split validation --style official \
    --max-new-tokens 32 --batch-size 16 --name smol-shapes-base
# What was made, and where it came from.
$R1V3 artifacts ls
$R1V3 artifacts lineage smol-shapes-base
# Next: does training teach it to see? `bash recipes/smol-signal.sh` (about 35 minutes on 2 cores)
# aligns the connector on captions, fine-tunes on problems, and prints held-out accuracy next to chance.
