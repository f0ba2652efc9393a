#!/usr/bin/env bash
# The README's main job, three times from fresh clones of this repository, one after another
# (nothing else running): wall time of the exact first command (dataset generation and
# start-up included), then `kseg test --mIOU` on the 64 test images at their original sizes.
# Usage: results/main_job/run_three.sh [REPO] [LABEL] ; logs go to results/main_job/<LABEL>/run<N>.log
# (LABEL defaults to the date)
# (a run whose log already ends with "mean IoU" is skipped, so the script resumes).
set -euo pipefail
REPO=${1:-$(cd "$(dirname "$0")/../.." && pwd)}
OUT="$REPO/results/main_job/${2:-$(date +%F)}"
mkdir -p "$OUT"
for n in 1 2 3; do
  log="$OUT/run$n.log"
  if [ -f "$log" ] && grep -q "^mean IoU:" "$log"; then continue; fi
  dir=$(mktemp -d /tmp/kseg_main_job.XXXX)
  git clone -q "$REPO" "$dir/kseg"
  cd "$dir/kseg"
  { echo "commit $(git rev-parse --short HEAD); $(date -u +%FT%TZ); $(lscpu | grep 'Model name' | sed 's/  */ /g')"
    PYTHONPATH="$PWD" /usr/bin/time -f "wall %e s, peak RSS %M KB" \
      python scripts/train.py --model_name unet --loss dice 2>&1 | grep -v "^[0-9]*/[0-9]* \[\|━" || true
    PYTHONPATH="$PWD" python scripts/test.py --weights_path weights/unet_shapes --mIOU 2>&1 | tail -12
  } > "$log.part" 2>&1
  mv "$log.part" "$log"
  cd / && rm -rf "$dir"
done
grep -h "^wall\|^mean IoU:\|best val_mean_iou" "$OUT"/run*.log
