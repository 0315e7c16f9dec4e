#!/usr/bin/env bash
# The early-exit-trained models of the serving benchmark (docs/serving.md), as they were trained: smollm2-135m,
# Stepwise, B=2 and B=3, uptrained on 122,880 tokens of the local corpus, then early-exit post-trained with the
# paper's recipe (early_exit=aggressive_kd) on the next 65,536 tokens (B=3 also on the next 131,072), then their exit
# heads fitted (rrt-exit-head), then benchmarked. Weights stay in the runs root; `python -m benchmarks.exit_models
# <post-trained run dirs>` copies their records and exit-head reports into benchmarks/results/ for the docs.
#
#   bash benchmarks/exit_models.sh [runs root]      # default runs/exit_models
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(realpath -m "${1:-runs/exit_models}")
PY=${PY:-.venv/bin/python}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} OMP_WAIT_POLICY=PASSIVE
declare -A POST_TOKENS=([2]="65536" [3]="65536 131072")
declare -A POST
COMMON="budget.val_check_interval=40 budget.checkpoint_every_n_steps=40 logger=csv paths.runs_root=$ROOT"
for B in 2 3; do
  $PY train.py model=smollm2_135m init=stepwise recursion.loops=$B budget.tokens=122880 $COMMON
  UP=$(grep -l "\"loops\": $B," "$ROOT"/train/*init-stepwise*model-smol*/record.json | head -1 | xargs dirname)
  for TOKENS in ${POST_TOKENS[$B]}; do
    $PY train.py model.name="$UP" model.tokenizer=smollm2_135m early_exit=aggressive_kd budget.tokens=$TOKENS \
      data.skip_tokens=122880 $COMMON eval=ppl eval.perplexity.max_documents=5 "eval.exit_loops=[$(seq -s, 1 $B)]"
    RUN=$(ls -td "$ROOT"/train/*/ | head -1)
    # the 65,536-token models' heads were fitted before inputs=hidden+change and per-loop thresholds existed
    HEAD=$([ "$TOKENS" = 65536 ] && echo "exit_head.inputs=hidden exit_head.thresholds=shared" || true)
    $PY -m rrt.cli.exit_head run="$RUN" $HEAD hydra.run.dir="$ROOT/exit_head_b${B}_post$TOKENS"
    echo "B=$B, $TOKENS post-training tokens: $RUN"
    POST[$B-$TOKENS]=$RUN
  done
done
POSTS=("${POST[2-65536]}" "${POST[3-65536]}" "${POST[3-131072]}")
$PY -m benchmarks.exit_models "${POSTS[@]}"
# Which exit head (inputs, size, per-loop or shared thresholds) exits earliest at the target: ExitHeadFit's defaults
$PY -m benchmarks.exit_head_variants --run "${POST[3-131072]}"
# The measured-vs-simulated serving benchmark of each model on one workload (docs/serving.md), one thread and
# nothing else running; --record adds the rows to the runs' records (analysis Table K.2).
SERVE="--requests 64 --prompt-tokens 16 --min-new 16 --max-new 80 --batches 16 32 --rounds 3 --record"
OMP_NUM_THREADS=1 $PY -m benchmarks.serving --run "${POST[2-65536]}" $SERVE --no-head-batch-slots \
  --relaxed-adapters stacked grouped --output serving
OMP_NUM_THREADS=1 $PY -m benchmarks.serving --run "${POST[3-65536]}" $SERVE --no-head-batch-slots --output serving_b3
# B=3 at a larger batch (replay only: vanilla, CSB, CDB without exits and with the oracle pattern)
OMP_NUM_THREADS=1 $PY -m benchmarks.serving --run "${POST[3-65536]}" --requests 192 --prompt-tokens 16 --min-new 16 \
  --max-new 80 --batches 64 --rounds 3 --record --no-head-batch-slots --exit-setups replay --relaxed-rank 0 \
  --output serving_b3_large
# The B=3 model post-trained on 131,072 tokens on a decode-heavy workload (the paper's 64-192 new tokens per
# request): vanilla, CSB, CDB without exits, replaying the oracle pattern and with the live learned head
OMP_NUM_THREADS=1 $PY -m benchmarks.serving --run "${POST[3-131072]}" --requests 48 --prompt-tokens 16 --min-new 64 \
  --max-new 192 --batches 16 32 --rounds 3 --record --no-head-batch-slots --exit-setups replay learned \
  --relaxed-rank 0 --output serving_b3_decode
# The paper's simulation (App. K) of both models at the memory-capped batch
OMP_NUM_THREADS=1 $PY -m benchmarks.simulate --runs "${POST[2-65536]}" "${POST[3-65536]}" --output simulate_trained
