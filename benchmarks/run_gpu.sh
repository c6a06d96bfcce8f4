#!/usr/bin/env bash
# The GPU figures of the issues in one go (nano-1, random weights), each benchmark's JSON
# written to OUT_DIR (default: bench-out/), a failing or slow one reported and skipped.
#
#   bash benchmarks/run_gpu.sh [OUT_DIR [NAME...]]     # NAMEs: run only those (e.g. train_32k)
#
# Each run has its own time limit (together 24 minutes at worst, compilation included; a
# device session of 15 minutes should name the runs it needs); the order is by importance.
set -u
out=${1:-bench-out}
only=" ${*:2} "
mkdir -p "$out"
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_MEM_FRACTION=0.95  # one process at a time: let it have the card

run() {  # run NAME SECONDS COMMAND...: stdout to OUT/NAME.json, the end of stderr to OUT/stderr.log
  local name=$1 limit=$2
  shift 2
  [ "$only" = "  " ] || [[ "$only" == *" $name "* ]] || return 0
  local start=$SECONDS err
  err=$(mktemp)
  timeout "$limit" "$@" >"$out/$name.json" 2>"$err"
  local rc=$?
  echo "== $name: exit $rc after $((SECONDS - start)) s" | tee -a "$out/stderr.log"
  tail -n 20 "$err" >>"$out/stderr.log"
  [ $rc -eq 0 ] || tail -n 15 "$err"
  rm -f "$err"
}

{ nvidia-smi -L 2>/dev/null; python3 -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())"; } 2>&1
run train_2k_b8 150 python3 benchmarks/train_throughput.py --preset nano-1 --seq-len 2048 --batch 8 --steps 8 --breakdown
run decode 130 python3 benchmarks/decode.py --preset nano-1 --batch-sizes 1,32 --steps 64
# Batch-1 decode ran at 2.11 ms against a 1.06 ms roofline. Is the rest a fixed cost per step
# (some 400 kernel launches)? The same 18 layers with tiny weights time that cost alone, and
# CUDA graphs of every kind of command (XLA's command buffers) show how much launches take.
run decode_fixed_cost 60 python3 benchmarks/decode.py --preset nano-1 --set width=256 --set mlp_dim=512 --set vocab_size=2048 --variants float,int4 --batch-sizes 1 --steps 64
run decode_graphs 90 env XLA_FLAGS="--xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,CONDITIONAL,WHILE --xla_gpu_graph_min_graph_size=1" python3 benchmarks/decode.py --preset nano-1 --batch-sizes 1 --steps 64
# The fused int4 kernel (model/int4_kernel.py) against dequantize-then-matmul and bfloat16, per shape.
run int4_matmul 180 python3 benchmarks/int4_matmul.py --preset nano-1 --reps 16
run attention 70 python3 benchmarks/attention_speed.py --preset nano-1 --lengths 2048,8192,32768
run train_32k 120 python3 benchmarks/train_throughput.py --preset nano-1 --seq-len 32768 --batch 1 --steps 4 --remat full
run decode_gemma2b 60 python3 benchmarks/decode.py --preset nano-1 --set mlp_dim=16384 --variants float --batch-sizes 1,32 --steps 64
run decode_xla 60 python3 benchmarks/decode.py --preset nano-1 --attention xla --variants float --batch-sizes 1,32 --steps 64
run train_2k_b16_dots 90 python3 benchmarks/train_throughput.py --preset nano-1 --seq-len 2048 --batch 16 --steps 6 --remat dots
run train_2k_b8_scan 150 python3 benchmarks/train_throughput.py --preset nano-1 --seq-len 2048 --batch 8 --steps 8 --scan-layers
run compile_time 240 python3 benchmarks/compile_time.py --preset nano-1 --batch 8 --seq-len 2048
