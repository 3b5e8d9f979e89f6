#!/usr/bin/env bash
# benchmarks/image_throughput.py on one CUDA GPU: ResNet-50 at 224x224, batch 256, synthetic
# tensors against a generated image folder streamed by 12 DataLoader processes (of 16 cores);
# first in fp32 (torch's defaults: TF32 convolutions, no cuDNN autotuning), then with bf16
# autocast and channels_last (the faster model, so the harder test for the loader). The folder
# (10,240 JPEGs of 280-336 px, one epoch covering the 40 timed steps) is written once, on every
# core, and used by both runs. Needs only torch, torchvision, numpy and Pillow: sparsebench is
# read from src/. Each step has a time limit; the whole script stays under 8 minutes.
#
#     OUT=/some/folder bash benchmarks/image_throughput_gpu.sh   # -> $OUT/image_throughput_gpu.txt
#
# MODEL, SIZE, BATCH, WARMUP, STEPS, WORKERS, THREADS and DEVICE override the settings (a CPU
# check of this script: DEVICE=cpu MODEL=resnet18 SIZE=32 BATCH=8 WARMUP=1 STEPS=2 WORKERS=2).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
OUT="${OUT:-benchmarks}"
MODEL="${MODEL:-resnet50}" SIZE="${SIZE:-224}" BATCH="${BATCH:-256}" WARMUP="${WARMUP:-10}"
STEPS="${STEPS:-40}" WORKERS="${WORKERS:-12}" THREADS="${THREADS:-4}" DEVICE="${DEVICE:-cuda}"
PYTHON="${PYTHON:-python3}"
mkdir -p "$OUT"
result="$OUT/image_throughput_gpu.txt"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
: > "$result"

say() { echo "$*" | tee -a "$result"; }

say "# $0 at $(date -u +%Y-%m-%dT%H:%MZ) on $(hostname): $MODEL ${SIZE}x$SIZE, batch $BATCH," \
    "$WARMUP warm-up + $STEPS timed steps, $WORKERS loader workers, $THREADS threads"
if command -v nvidia-smi > /dev/null; then
    say "# $(nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm \
        --format=csv,noheader | head -1)"
fi
# 12 workers x 4 prefetched batches of 256 uint8 224x224 crops pass through /dev/shm (~1.8 GB)
say "# /dev/shm: $(df -h /dev/shm | awk 'NR == 2 {print $2 " size, " $4 " free"}');" \
    "$(nproc) cores; load average $(cut -d' ' -f1-3 /proc/loadavg)"

start=$SECONDS
timeout 120 "$PYTHON" - "$tmp/folder" "$((BATCH * STEPS))" "$SIZE" <<'EOF'
import sys
from pathlib import Path

sys.path.insert(0, "benchmarks")
from image_throughput import generate_folder

generate_folder(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), classes=16)
EOF
say "# folder: $(find "$tmp/folder/train" -name '*.jpg' | wc -l) training JPEGs," \
    "$(du -sh "$tmp/folder" | cut -f1), written in $((SECONDS - start)) s"

common=(--model "$MODEL" --size "$SIZE" --batch-size "$BATCH" --warmup "$WARMUP"
        --steps "$STEPS" --workers "$WORKERS" --threads "$THREADS" --device "$DEVICE"
        --folder "$tmp/folder")
for extra in "" "--bf16 --channels-last"; do
    say ""
    say "## ${extra:-fp32}"
    # shellcheck disable=SC2086  # $extra is meant to split into its flags
    timeout 170 "$PYTHON" benchmarks/image_throughput.py "${common[@]}" $extra 2>&1 \
        | tee -a "$result" || say "# exit ${PIPESTATUS[0]} (124: over its 170 s)"
done
say ""
say "# done in $SECONDS s"
