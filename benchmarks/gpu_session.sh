#!/usr/bin/env bash
# One GPU session's checks and measurements, prepared to fit a single call of a short lease.
#
#   bash benchmarks/gpu_session.sh OUT_DIR [SECONDS]
#
# Expects `discobox` importable (PYTHONPATH=src or installed) and DISCOBOX_SHARED_DATA pointing
# at a folder holding droplets/ (../shared/data by default). Everything it measures lands in
# OUT_DIR (session.log, checks.log, seeds_*.txt, runs.tgz); it stops its runs at SECONDS
# (default 540) after its start, whatever is unfinished, and still packs what finished.
#  1. speed.py on the idle GPU (AMP fp16; SOLOv2 R-50 beside Mask R-CNN R-50);
#  2. droplets seed sweep (benchmarks/seeds.py): full and meanfield, 3 seeds, the CPU table's
#     900-iteration recipe, 6 runs at once (SWEEP_VARIANTS, SWEEP_SEEDS and SWEEP_PARALLEL
#     change them, e.g. SWEEP_VARIANTS=meanfield,meanfield_ortho SWEEP_SEEDS=0,1,2,3,4,5
#     SWEEP_PARALLEL=12 LONG_MIN=99999 for a seed study without the long schedule; the
#     calibration of step 3 reads the meanfield runs, so keep meanfield in the list);
#  3. the same pair on a longer schedule: as many iterations as the sweep's measured speed lets
#     finish before the deadline (multiples of 300, 1800 at least, 4500 at most);
#  4. meanwhile, correctness on CUDA: the CPU/CUDA pseudo-label test, torchrun (NCCL, DDP) with
#     fp16 AMP killed after its first checkpoint and resumed, and a bf16 run.
set -u
OUTD=$(mkdir -p "$1" && cd "$1" && pwd); BUDGET=${2:-540}
T0=$(date +%s); DEADLINE=$((T0 + BUDGET))
left() { echo $((DEADLINE - $(date +%s))); }
stamp() { echo "[t+$(($(date +%s) - T0))s] $*"; }
PY=${PYTHON:-python3}
SWEEP_ITERS=${SWEEP_ITERS:-900}; LONG_MIN=${LONG_MIN:-1800}  # smaller: a dry run on the CPU
SWEEP_VARIANTS=${SWEEP_VARIANTS:-full,meanfield}; SWEEP_SEEDS=${SWEEP_SEEDS:-0,1,2}
SWEEP_PARALLEL=${SWEEP_PARALLEL:-6}
export PYTHONUNBUFFERED=1
exec > >(tee -a "$OUTD/session.log") 2>&1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c "import torch, torchvision, discobox; print('torch', torch.__version__, 'torchvision',
torchvision.__version__, torch.cuda.get_device_name(0), 'cpus', __import__('os').cpu_count())" \
    || exit 1
RECIPE=(model.backbone.frozen_stages=-1 model.backbone.norm_eval=false
        "data.train_crop=[256,320]" "test.tile=[256,320]")

stamp "1. speed"
timeout 80 $PY benchmarks/speed.py --device cuda --threads 4 --reps 5 --cases \
    infer_solov2_r50,infer_maskrcnn_r50,train_solov2_r50_box,train_maskrcnn_r50,train_solov2_r18_box

stamp "2. seed sweep"
$PY benchmarks/seeds.py --dataset droplets --variants "$SWEEP_VARIANTS" --seeds "$SWEEP_SEEDS" \
    --iters "$SWEEP_ITERS" --scale 512 --batch 2 --tag _s512crop_gpu --parallel "$SWEEP_PARALLEL" \
    --set "${RECIPE[@]}" \
    > "$OUTD/seeds_900.txt" 2>&1 &
SWEEP=$!

stamp "4. CUDA checks"
(
  set -x
  timeout 120 $PY -m pytest -q -p no:cacheprovider tests/test_pseudo_label.py -k cuda
  SYN=/tmp/syn
  $PY -c "from discobox.data.synthetic import make_synthetic_coco as m; m('$SYN', num_train=48,
num_val=8, image_size=(160, 160), seed=0, max_objects=4)"
  mapfile -t SYNSET < <($PY -c "import sys; sys.path.insert(0, 'benchmarks')
from common import dataset_overrides as d; print('\n'.join(d('$SYN')))")
  SYNSET+=("data.train_scales=[[320,160]]" "data.test_scale=[320,160]" data.batch_size=4
           data.num_workers=1 train.eval_period=0 train.tensorboard=false teacher.start_iter=10
           solver.warmup_iters=5 "solver.steps=[50,55]")
  $PY -m torch.distributed.run --nproc-per-node 1 -m discobox train discobox_r18_fpn_cpu --output-dir /tmp/ddp \
      "${SYNSET[@]}" solver.max_iter=60 train.checkpoint_period=20 solver.amp=fp16 &
  P=$!
  set +x  # kill it once its first checkpoint is written
  for _ in $(seq 240); do
    { [ -f /tmp/ddp/model_0000020.pth ] || ! kill -0 $P; } 2>/dev/null && break; sleep 0.5
  done
  set -x
  pkill -9 -f "output-dir /tmp/ddp"; wait $P
  ls /tmp/ddp
  timeout 150 $PY -m torch.distributed.run --nproc-per-node 1 -m discobox train discobox_r18_fpn_cpu \
      --output-dir /tmp/ddp --resume "${SYNSET[@]}" solver.max_iter=60 \
      train.checkpoint_period=20 solver.amp=fp16
  grep -h "resuming\|training .* iterations" /tmp/ddp/log.txt; cat /tmp/ddp/metrics_final.json
  timeout 120 $PY -m discobox train discobox_r18_fpn_cpu --output-dir /tmp/bf16 "${SYNSET[@]}" \
      solver.max_iter=30 solver.amp=bf16
  cat /tmp/bf16/metrics_final.json
) > "$OUTD/checks.log" 2>&1 &
CHECKS=$!

stamp "3. long schedule: calibrating on the sweep"
SPI=""
for _ in $(seq 120); do
  SPI=$($PY - <<'EOF'
import glob, json
v = []
for f in glob.glob("benchmarks/out/quality/droplets_s512crop_gpu*/meanfield/metrics.jsonl"):
    recs = [json.loads(x) for x in open(f) if "sec_per_iter" in x]
    v += [r["train/sec_per_iter"] for r in recs[1:]]
print(f"{sum(v) / len(v):.4f}" if len(v) >= 6 else "")
EOF
)
  [ -n "$SPI" ] && break
  if ! kill -0 $SWEEP 2>/dev/null; then  # failed at start: say why and stop, so a rerun fits
    stamp "the sweep ended before its speed could be read"; cat "$OUTD/seeds_900.txt"
    for f in benchmarks/out/quality/droplets_s512crop_gpu*/*/stdout.txt; do
      echo "== $f"; tail -c 3000 "$f"; done
    break
  fi
  sleep 3
done
ITERS=$($PY -c "
spi = float('${SPI:-0}' or 0); avail = $(left) - 60
step = min(300, $LONG_MIN)
n = int(avail / (spi * 1.35) / step) * step if spi else 0
print(min(n, 4500))")
stamp "sweep meanfield s/iter ${SPI:-?}; long schedule: ${ITERS} iterations"
if [ "${ITERS:-0}" -ge "$LONG_MIN" ]; then
  $PY benchmarks/seeds.py --dataset droplets --variants full,meanfield --seeds 0 \
      --iters "$ITERS" --scale 512 --batch 2 --tag "_s512crop_gpu_it$ITERS" --parallel 2 \
      --set "${RECIPE[@]}" > "$OUTD/seeds_long.txt" 2>&1 &
  LONG=$!
fi

while [ "$(left)" -gt 25 ] && { kill -0 $SWEEP 2>/dev/null || kill -0 ${LONG:-0} 2>/dev/null \
    || kill -0 $CHECKS 2>/dev/null; }; do sleep 5; done
stamp "stopping what is left"
pkill -f "discobox train"; pkill -f seeds.py; kill $CHECKS 2>/dev/null
sleep 2
cd benchmarks/out && tar czf "$OUTD/runs.tgz" $(ls seeds_*gpu*.json speed_cuda.json 2>/dev/null) \
    $(ls -d quality/droplets_s512crop_gpu*/*/ | while read -r d; do
        for f in metrics_final.json metrics.jsonl log.txt config.yaml; do
          [ -f "$d$f" ] && echo "$d$f"; done; done)
stamp "done"; cat "$OUTD"/seeds_*.txt
