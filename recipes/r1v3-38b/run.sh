#!/usr/bin/env bash
# Skywork-R1V3 (arXiv 2507.06167) on InternVL3-38B, as the paper ran it, on GPU nodes of 8 x 80 GB.
# Not runnable on a CPU; each step below is one r1v3 command, the paper's numbers live in the YAML files
# it passes (recipes/sft/*.yaml, recipes/rl/r1v3-38b.yaml, recipes/r1v3-38b/recipe.yaml).
#
# Before: pip install -e '.[vllm]' deepspeed; the models on local disk; a vLLM server of the teacher:
#   vllm serve deepseek-ai/DeepSeek-R1-Distill-Qwen-32B --tensor-parallel-size 8 --port 8000
# Usage (from the first node; the store on a filesystem every node mounts):
#   INTERNVL=/models/InternVL3-38B-hf R1_LLM=/models/DeepSeek-R1-Distill-Qwen-32B \
#   PROBLEMS=/data/problems.jsonl PROBE=/data/probe.jsonl ALIGN=/data/captions.jsonl RETUNE=/data/retune.jsonl \
#   MMMU=/data/MMMU \
#   TEACHER=http://teacher-host:8000/v1 R1V3_STORE=/shared/r1v3 bash recipes/r1v3-38b/run.sh
# More nodes: NODES=4 MASTER_ADDR=node0 HOSTFILE=/job/hostfile (DeepSpeed's "host slots=8" lines); training
# then runs over every node through pdsh (recipes/r1v3-38b/zero3-multinode.yaml), the rest on this one.
# One node holds alignment, re-tune and every vLLM stage, but not the cold start (2 nodes) or GRPO (4 nodes,
# or optimizer offload): README "On GPUs" has the memory per stage.
#
# Re-running skips each stage whose artifact is up to date (R1V3_REUSE=1) and resumes an interrupted one.
source "$(dirname "$0")/../lib.sh"
need_python
export R1V3_REUSE=${R1V3_REUSE:-1}
: "${INTERNVL:?set INTERNVL to the InternVL3-38B directory (transformers format, safetensors)}"
: "${R1_LLM:?set R1_LLM to the DeepSeek-R1-Distill-Qwen-32B directory}"
: "${PROBLEMS:?set PROBLEMS to the problem rows (jsonl/parquet/HF dir) with captions, difficulty normal|hard}"
: "${PROBE:?set PROBE to held-out problem rows for checkpoint selection (not in PROBLEMS)}"
: "${ALIGN:?set ALIGN to the image-caption rows for connector alignment}"
: "${RETUNE:?set RETUNE to the re-tune rows (think-template messages; train and validation splits)}"
: "${MMMU:?set MMMU to the MMMU directory (as laid out on the hub)}"
TEACHER=${TEACHER:-http://localhost:8000/v1}
TEACHER_MODEL=${TEACHER_MODEL:-deepseek-ai/DeepSeek-R1-Distill-Qwen-32B}
NODES=${NODES:-1}
GPUS=$((8 * NODES))
RECIPE=recipes/r1v3-38b/recipe.yaml
TIMES="$R1V3_STORE/r1v3-38b-times.tsv"
: > "$TIMES"

if [ "$NODES" -gt 1 ]; then
    : "${MASTER_ADDR:?set MASTER_ADDR to the address of the first node}" "${HOSTFILE:?set HOSTFILE (DeepSpeed hostfile)}"
    LAUNCH=(accelerate launch --config_file recipes/r1v3-38b/zero3-multinode.yaml --num_machines "$NODES"
            --num_processes "$GPUS" --main_process_ip "$MASTER_ADDR" --deepspeed_hostfile "$HOSTFILE" -m r1v3.cli)
else
    LAUNCH=(accelerate launch --config_file recipes/accelerate/zero3.yaml -m r1v3.cli)
fi
# 1024 completions per GRPO step (paper) = 4 per GPU x GPUS x grad_accum
RL_ACCUM=$((1024 / 4 / GPUS))

# 1. The models and data, imported as artifacts (copied and hashed once; later runs reuse them).
timed "import InternVL3-38B" internvl3-38b $R1V3 import-model "$INTERNVL" --name internvl3-38b
timed "import R1-distilled Qwen 32B" r1-qwen-32b $R1V3 import-model "$R1_LLM" --name r1-qwen-32b
timed "import problems" problems $R1V3 data import "$PROBLEMS" --name problems
timed "import probe problems" probe $R1V3 data import "$PROBE" --name probe --as-split validation
timed "import alignment captions" align-captions $R1V3 data import "$ALIGN" --name align-captions
timed "import re-tune data" retune $R1V3 data import "$RETUNE" --name retune
timed "import MMMU validation" mmmu-val $R1V3 data mmmu --path "$MMMU" --name mmmu-val --split validation
# 2. R1V: InternVL's vision tower and connector in front of the R1-distilled LLM (hidden size 5120 both:
#    the connector is kept), then connector-only alignment (lr 2e-4, wd 0.05, warmup 0.03, 1 epoch, 16k).
timed "compose" composed $R1V3 compose --vlm internvl3-38b --llm r1-qwen-32b --name composed
timed "sft connector-align" aligned "${LAUNCH[@]}" sft --config recipes/sft/connector-align.yaml \
    --model composed --data align-captions --name aligned --resume
# 3. Cold start: traces from the text-only teacher reading each problem's caption, verified (paper:
#    ~20K problems -> ~12K traces), then SFT of connector + LLM on them.
timed "distill" traces $R1V3 distill --config "$RECIPE" --teacher "$TEACHER" --teacher-model "$TEACHER_MODEL" \
    --data problems --name traces --resume
timed "sft cold-start" cold "${LAUNCH[@]}" sft --config recipes/sft/cold-start.yaml \
    --model aligned --data traces --name cold --resume
# 4. Pass rates of the cold-start policy (vLLM), then GRPO with the normal -> hard curriculum: group 32,
#    1024 rollouts per step, clip 0.2, no KL, lr 1e-5, 4096 tokens, reward 0.8 accuracy + 0.2 format.
timed "difficulty" problems-rated $R1V3 difficulty --config "$RECIPE" --model cold --data problems \
    --name problems-rated --resume
timed "rl --curriculum hard" rl "${LAUNCH[@]}" rl --config recipes/rl/r1v3-38b.yaml --model cold \
    --data problems-rated --name rl --grad-accum "$RL_ACCUM" --resume
timed "rl export (final step)" rl-final $R1V3 rl export rl --name rl-final --config "$RECIPE"
# 5. The checkpoint whose "Wait" / "Alternatively" / "Hmm" tokens carry the most entropy on held-out problems.
timed "select-ckpt" selected,selected-model $R1V3 select-ckpt --config "$RECIPE" --run rl --probe probe \
    --name selected --model-name selected-model --resume
# 6. Connector-only re-tune after RL: 10K samples over 20 domains, 2 epochs, batch 64, lr 1e-5 (MMMU
#    74.5 -> 76.0 in the paper). `data import` stores one split, so the preset's early stopping on a
#    validation split is off here (the paper states none).
timed "sft connector-retune" retuned "${LAUNCH[@]}" sft --config recipes/sft/connector-retune.yaml \
    --model selected-model --data retune --name retuned --resume early_stopping_patience=0 eval_split=null
# 7. MMMU validation with the think template, 16384 tokens, temperature 1.0, mean of 5 runs; every stage's model.
for model in internvl3-38b composed aligned cold rl-final selected-model retuned; do
    timed "eval $model" "mmmu-$model" $R1V3 eval mmmu --config "$RECIPE" --model "$model" --data mmmu-val \
        --name "mmmu-$model" --resume
done
"$PYTHON" recipes/summary.py "$R1V3_STORE" "$TIMES" mmmu-val validation
$R1V3 report retuned --out "$R1V3_STORE/report-r1v3-38b.html"
