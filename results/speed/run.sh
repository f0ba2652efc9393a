#!/usr/bin/env bash
# Speed runs of 2026-12-02 (session 9), from the repository root: bash results/speed/run.sh [DATE]
# 1. dilated models: kseg's default (dilated convolutions as one Conv2D op) next to the
#    keras_dilation variant (Keras' own TensorFlow path: SpaceToBatch + conv + BatchToSpace)
# 2. ENet as the CamVid recipe trains it (360x480, batch 10): seconds per 367-image epoch
# 3. the zoo table's rows for the models added since its run, with two anchors (unet, enet)
# Each step appends JSON lines to results/speed/<DATE>/*.jsonl and its printed tables to *.md;
# a step whose .md exists is skipped (rerun the script to resume after an interruption).
set -euo pipefail
cd "$(dirname "$0")/../.."
D=results/speed/${1:-$(date -u +%F)}
mkdir -p "$D"
step() {  # name, then the benchmark's arguments
  local name=$1; shift
  [ -s "$D/$name.md" ] && { echo "$name: done ($D/$name.md)"; return; }
  echo "$ python -m kseg benchmark $*" | tee "$D/$name.log"
  python -m kseg benchmark "$@" --json_out "$D/$name.jsonl" >> "$D/$name.log" 2>&1
  grep -v '^{' "$D/$name.log" | grep -v '^I0000\|^WARNING\|^E0000' > "$D/$name.md.tmp" && mv "$D/$name.md.tmp" "$D/$name.md"
}
step dilation --model_name deeplabv3plus,deeplab_v2,pspnet,deeplabv3,icnet,enet --variants default,keras_dilation \
  --input_height 224 --batch_size 4 --steps 5 --warmup 2 --rounds 1
step enet_camvid --model_name enet --variants default,keras_dilation --input_height 360 --input_width 480 \
  --batch_size 10 --n_classes 12 --epoch_images 367 --steps 5 --warmup 2 --rounds 1
step zoo_new --model_name fpn,linknet,pan,manet,upernet,deeplabv3,segformer,unet,enet --input_height 224 \
  --batch_size 4 --baseline off --steps 5 --infer_runs 10 --pipeline_data ''
# 4. next to the PyTorch peers (needs a Python with kseg[bench]: TORCH_PY=/path/to/python)
if [ -n "${TORCH_PY:-}" ]; then
  [ -s "$D/peers.md" ] && echo "peers: done" || {
    echo "$ $TORCH_PY -m kseg benchmark --peers deeplabv3plus,deeplabv3plus_separable,enet ..." | tee "$D/peers.log"
    "$TORCH_PY" -m kseg benchmark --peers deeplabv3plus,deeplabv3plus_separable,enet --variants default \
      --peer_settings torch_bf16 --input_height 224 --batch_size 4 --steps 5 --warmup 2 --rounds 1 \
      --json_out "$D/peers.jsonl" >> "$D/peers.log" 2>&1
    grep -v '^{' "$D/peers.log" | grep -v '^I0000\|^WARNING\|^E0000' > "$D/peers.md"; }
fi
