#!/usr/bin/env bash
# The GPU checks of the real-size PI0 path, on one GPU (one H100: about 5 minutes, under 8).
#
#   bash benchmarks/gpu_check.sh          # GPU machine; falls back to the CPU parts when no GPU is visible
#   bash benchmarks/gpu_check.sh --cpu    # the CPU parts only (what runs on a CPU-only machine)
#
# 1. PI0 update step (forward + backward + AdamW, bf16 autocast, trunk frozen) and one action
#    chunk, tiny and real size (gemma_2b + gemma_300m), with gradient checkpointing against
#    without it: time and peak memory (benchmarks/pi0_step.py prints the ratios).
# 2. `torchrun --nproc_per_node=1` with nccl: a process group and one all-reduce against a copy
#    (benchmarks/nccl_probe.py; the recipe itself builds a group only for 2+ ranks), and the toy
#    recipe under torchrun against a plain process.
# 3. LIBERO rendering through EGL on GPU 0 (render_gpu_device_id=0) against CPU rendering
#    (OSMesa), in simulator steps/s with both cameras rendered every step.
# Every figure is printed with its ratio against the baseline measured in the same run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

MODE=gpu
if [[ "${1:-}" == "--cpu" ]]; then
  MODE=cpu
elif ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "no CUDA GPU visible: running the CPU parts only (GPU parts are skipped and say so)"
  MODE=cpu
fi
if [[ $MODE == gpu ]]; then
  DEV=cuda; BACKEND=nccl
  "$PY" -c "import torch; print('device:', torch.cuda.get_device_name(0))"
else
  DEV=cpu; BACKEND=gloo
fi

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "nan" }'; }
seconds() { local start=$SECONDS; "$@" > "$OUT/last.log" 2>&1 || { tail -20 "$OUT/last.log"; return 1; }; echo $((SECONDS - start)); }

echo
echo "== 1. PI0 update step and action chunk in bf16, gradient checkpointing vs none (ratio = with / without)"
if [[ $MODE == gpu ]]; then
  timeout 150 "$PY" benchmarks/pi0_step.py size=tiny device=cuda batch=8 repeats=5
  timeout 300 "$PY" benchmarks/pi0_step.py size=full device=cuda batch=8 repeats=3
else
  timeout 300 "$PY" benchmarks/pi0_step.py size=tiny device=cpu batch=2 repeats=2
  echo "skipped: real-size PI0 on a GPU (no GPU here); on a CPU use benchmarks/pi0_full_size.py size=full"
fi

echo
echo "== 2. torchrun --nproc_per_node=1 with $BACKEND; then the toy recipe under torchrun vs a plain process on $DEV"
timeout 120 "$PY" -m torch.distributed.run --standalone --nproc_per_node=1 benchmarks/nccl_probe.py "backend=$BACKEND" mib=64 2>&1 | tail -1
TOY=(--config-name toy "train.device=$DEV" train.iterations=2 eval.every=1000)
plain=$(seconds timeout 180 "$PY" recipes/ript_cfg.py "${TOY[@]}" "logging.output_dir=$OUT/plain")
ddp=$(seconds timeout 180 "$PY" -m torch.distributed.run --standalone --nproc_per_node=1 recipes/ript_cfg.py "${TOY[@]}" \
  "distributed.backend=$BACKEND" "logging.output_dir=$OUT/ddp")
echo "plain ${plain} s, torchrun ${ddp} s, ratio torchrun / plain $(ratio "$ddp" "$plain") (wall time incl. start-up)"

echo
echo "== 3. LIBERO rendering, 2 cameras at 224 px every step (ratio = against CPU rendering)"
cpu_rate=$(MUJOCO_GL=osmesa PYOPENGL_PLATFORM=osmesa timeout 120 "$PY" benchmarks/render_rate.py steps=40 2>"$OUT/render.err" | tee "$OUT/render.log" | sed -n 's/^steps_per_s=//p')
echo "CPU (OSMesa): ${cpu_rate:-failed} steps/s"
if [[ $MODE == gpu ]]; then
  gpu_rate=$(MUJOCO_GL=egl PYOPENGL_PLATFORM=egl timeout 120 "$PY" benchmarks/render_rate.py steps=40 gpu_id=0 2>"$OUT/render.err" | sed -n 's/^steps_per_s=//p')
  echo "GPU 0 (EGL, render_gpu_device_id=0): ${gpu_rate:-failed} steps/s, ratio GPU / CPU $(ratio "${gpu_rate:-0}" "${cpu_rate:-0}")"
else
  egl_rate=$(MUJOCO_GL=egl PYOPENGL_PLATFORM=egl timeout 120 "$PY" benchmarks/render_rate.py steps=40 2>"$OUT/render.err" | sed -n 's/^steps_per_s=//p')
  echo "EGL on the default device (Mesa on a CPU machine): ${egl_rate:-failed} steps/s, ratio EGL / OSMesa $(ratio "${egl_rate:-0}" "${cpu_rate:-0}")"
  echo "skipped: EGL on a GPU (render_gpu_device_id=0) needs a GPU"
fi
echo
echo "gpu_check done ($MODE mode, ${SECONDS} s)"
