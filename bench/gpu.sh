#!/usr/bin/env bash
# Every GPU measurement we have, in one run on one CUDA GPU, in under 8 minutes; JSON lines on stdout.
#
#   bash bench/gpu.sh                 # from a checkout with spikegpt[bench] installed and a CUDA build of torch
#   PYTHON=.venv/bin/python bash bench/gpu.sh > gpu.jsonl
#
# Parts (each under its own time limit, so one that hangs or fails cannot take the rest with it; a part's exit
# status is a JSON line of its own):
#   kernels      WKV and LIF: Triton against the torch reference, at training shapes and at T = 1 (the one-token
#                step, which the dispatch gives to the reference on CUDA: this measures that choice)
#   crossover    event-driven products (Triton union gather) against cuBLAS at the 12x768 shapes, batch 1 and 16;
#                written to a crossover file of this run only ($SPIKEGPT_CROSSOVER), which the next parts read
#   int8         the event-driven 8-bit product of spike counts (Triton, int32 sums) against cuBLAS's dense fp32
#                product at the same shapes (measured only: the engine decodes int8 on a CPU)
#   decode       dense, sparse and auto decoding steps (traced) at 12x768, batch 1 and 16, both placements
#   serve        the OpenAI-compatible server on the GPU with the bundled model, concurrency 1 and 16
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
export SPIKEGPT_CROSSOVER=${SPIKEGPT_CROSSOVER:-$(mktemp -d)/crossover.json}

part() {
  local name=$1 limit=$2
  shift 2
  local start=$SECONDS
  timeout --kill-after=10 "$limit" "$@"
  local rc=$?
  printf '{"measure": "gpu.sh", "part": "%s", "exit": %d, "seconds": %d, "limit_s": %d}\n' \
    "$name" "$rc" "$((SECONDS - start))" "$limit"
}

"$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "bench/gpu.sh needs a CUDA GPU")' || exit 1
part kernels 90 "$PY" bench/wkv_lif.py --parts kernels --device cuda \
  --shapes 1x1x768,16x1x768,8x1024x768,1x4096x768 --repeats 10 --warmup 3
part crossover 60 "$PY" bench/crossover.py --device cuda --sizes 12x768 --repeats 20
part int8 50 "$PY" bench/crossover.py --device cuda --sizes 12x768 --repeats 20 --dtype int8 --dry-run
part decode-residual 80 "$PY" bench/decode.py --device cuda --placement residual --sizes 12x768 --tokens 32 \
  --threads 1 --densities bundled 0.1 0.4
part decode-inputs 80 "$PY" bench/decode.py --device cuda --placement inputs --sizes 12x768 --tokens 32 \
  --threads 1 --densities bundled binary 0.1 0.4
part serve 100 "$PY" bench/serve.py --model bundled --device cuda --concurrency 1 16 --time-limit 20 \
  --max-tokens 64 --prompt-tokens 32
