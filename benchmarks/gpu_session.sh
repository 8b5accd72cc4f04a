#!/usr/bin/env bash
# Every GPU measurement behind benchmarks/README.md's GPU section, in one call on a lent GPU machine (whose time is
# short: each step under its own timeout, its result written to $OUT as soon as it exists, and at most eight files
# there, as many as come back). Prepare here with `bash ../shared/gpu/prepare.sh`, then on the machine, from the
# project root:
#     source .gpu/env.sh && bash benchmarks/gpu_session.sh
# DEVICE=cpu N=600 BERT_N=200 SKIP_TESTS=1 runs the same steps on a CPU in a few minutes, to check the script.
# BUDGET (default 540 s) is the time the whole script may take; the last step gets what is left of it.
set -u
OUT=${OUT:-gpu-out}
DEVICE=${DEVICE:-cuda}
N=${N:-16000}           # MiniLM rows: the setting
BERT_N=${BERT_N:-6000}  # BERT-base-sized rows: throughput only
LOGS=$(mktemp -d)
mkdir -p "$OUT"
step() { echo "== $(date +%T) $*" | tee -a "$OUT/steps.log"; }
BENCH=(python3 benchmarks/bench_train.py --device "$DEVICE" --peak-seconds 0 --wait-idle 0 --log-dir "$LOGS")

step machine
{ nvidia-smi; nproc; python3 -c "import torch, transformers, peft, accelerate; print(torch.__version__,
  transformers.__version__, peft.__version__, accelerate.__version__, torch.cuda.is_available())"
  python3 -c "import triton; print('triton', triton.__version__)"; command -v gcc cc; } > "$OUT/machine.txt" 2>&1

step "MiniLM: the anchors and loratune (bf16 default, and fp32)"
timeout 220 "${BENCH[@]}" --model minilm --n-train "$N" --variants anchor_fp32,anchor_bf16,loratune,loratune_fp32 \
  > "$OUT/minilm.txt" 2>&1
tail -n 12 "$OUT/minilm.txt"

step "profile of a training step and an evaluation batch"
timeout 70 python3 benchmarks/profile_step.py --device "$DEVICE" --model minilm > "$OUT/profile.txt" 2>&1
grep -E "^==|_per_batch|gpu_idle|sync_calls" "$OUT/profile.txt"

step "BERT-base-sized model (random weights)"
timeout 130 "${BENCH[@]}" --model bert-base --n-train "$BERT_N" --variants anchor_fp32,anchor_bf16,loratune \
  > "$OUT/bert_base.txt" 2>&1
tail -n 8 "$OUT/bert_base.txt"

left() { echo $((BUDGET - SECONDS > 30 ? BUDGET - SECONDS : 30)); }
: "${BUDGET:=540}"
if [ -z "${SKIP_TESTS:-}" ]; then
  step "the fast test suite with the GPU visible"
  timeout "$(( $(left) < 200 ? $(left) : 200 ))" python3 -m pytest -m "not slow" -n 8 --timeout 60 -v \
    -p no:cacheprovider -rfE > "$OUT/tests.txt" 2>&1
  grep -E "FAILED|ERROR|passed|failed" "$OUT/tests.txt" | tail -n 30
fi

step "MiniLM with --compile on, in what is left of $BUDGET s"
TORCH_LOGS=recompiles timeout "$(left)" "${BENCH[@]}" --model minilm --n-train "$N" --variants loratune_compile \
  > "$OUT/compiled.txt" 2>&1
tail -n 40 "$LOGS"/loratune_compile-*.log >> "$OUT/compiled.txt" 2>/dev/null
tail -n 8 "$OUT/compiled.txt"
step done
