#!/usr/bin/env bash
# The GPU figures of the issues in one go (nano-1, random weights), each benchmark's JSON
# written to OUT_DIR (default: bench-out/), a failing or slow one reported and skipped.
#
#   bash benchmarks/run_gpu.sh [OUT_DIR [NAME...]]     # NAMEs: run only those (e.g. train_32k)
#
# Each run has its own time limit (together 29 minutes at worst, compilation included; a
# device session of 15 minutes should name the runs it needs); the order is by importance.
set -u
out=${1:-bench-out}
only=" ${*:2} "
mkdir -p "$out" && out=$(cd "$out" && pwd)
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
prof=$(mktemp -d)  # traces and HLO dumps stay on the machine; summaries are in the JSON, HLO in *_hlo.tgz
dump() {  # dump NAME MODULE_REGEX: XLA_FLAGS that dump the optimized HLO of matching modules for hlo_tar NAME
  echo "--xla_dump_to=$prof/hlo_$1 --xla_dump_hlo_as_text --xla_dump_hlo_module_re=$2"
}
hlo_tar() {  # the optimized HLO of run NAME, to read the profile's kernel names against
  (cd "$prof/hlo_$1" 2>/dev/null && tar czf "$out/$1_hlo.tgz" ./*after_optimizations.txt) || true
}
# The copy and read bandwidths and matmul rate every ratio below is taken against, this session.
run ceilings 60 python3 benchmarks/ceilings.py
bandwidth=$(python3 -c "import json; print(json.load(open('$out/ceilings.json'))['read_bytes_per_s'])" 2>/dev/null || echo 3.02e12)
# The training step, where its device time goes, and its optimized HLO (the profile's op names).
run train_2k_b8 180 env XLA_FLAGS="$(dump train '.*_step.*')" \
  python3 benchmarks/train_throughput.py --preset nano-1 --seq-len 2048 --batch 8 --steps 4 --profile "$prof/train"
hlo_tar train
run train_2k_b8_chunk4k 120 python3 benchmarks/train_throughput.py --preset nano-1 --seq-len 2048 --batch 8 --steps 4 --logits-chunk 4096 --profile "$prof/train_chunk4k"
run train_2k_b16 130 python3 benchmarks/train_throughput.py --preset nano-1 --seq-len 2048 --batch 16 --steps 4
# Decoding, bfloat16 weights, each row profiled, the roofline at the read bandwidth measured above.
run decode 120 env XLA_FLAGS="$(dump decode '.*step.*')" python3 benchmarks/decode.py --preset nano-1 --variants float \
  --batch-sizes 1,32 --steps 64 --bandwidth "$bandwidth" --profile "$prof/decode"
hlo_tar decode
run decode_gemma2b 90 python3 benchmarks/decode.py --preset nano-1 --set mlp_dim=16384 --variants float --batch-sizes 1,32 --steps 64 --bandwidth "$bandwidth"
run train_2k_b8_cublas 130 env XLA_FLAGS=--xla_gpu_enable_triton_gemm=false python3 benchmarks/train_throughput.py --preset nano-1 --seq-len 2048 --batch 8 --steps 4
run decode_int4 120 python3 benchmarks/decode.py --preset nano-1 --batch-sizes 1,32 --steps 64 --graphs both --bandwidth "$bandwidth" --profile "$prof/decode_int4"
# The fused int4 kernel (model/int4_kernel.py) against dequantize-then-matmul and bfloat16, per shape.
run int4_matmul 120 python3 benchmarks/int4_matmul.py --preset nano-1 --rows 1,32 --reps 16 --repeats 3 --kernels 128x4,64x4,256x8
run attention 70 python3 benchmarks/attention_speed.py --preset nano-1 --lengths 2048,8192,32768
run train_32k 120 python3 benchmarks/train_throughput.py --preset nano-1 --seq-len 32768 --batch 1 --steps 4 --remat full
run decode_xla 60 python3 benchmarks/decode.py --preset nano-1 --attention xla --variants float --batch-sizes 1,32 --steps 64 --bandwidth "$bandwidth"
run train_2k_b16_dots 90 python3 benchmarks/train_throughput.py --preset nano-1 --seq-len 2048 --batch 16 --steps 6 --remat dots
run train_2k_b8_scan 150 python3 benchmarks/train_throughput.py --preset nano-1 --seq-len 2048 --batch 8 --steps 8 --scan-layers
run compile_time 240 python3 benchmarks/compile_time.py --preset nano-1 --batch 8 --seq-len 2048
