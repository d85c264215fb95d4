#!/bin/bash
# Train the default model inside a fixed time slot (how xr_opensr/weights/default was made, on one
# NVIDIA H200 in a 600 s slot): each stage first runs CAL_STEPS steps into /tmp/cal to time a step,
# then runs as many steps as fit its budget (AE_BUDGET, DIFF_BUDGET seconds) into runs/default,
# then exports. The stage commands are recorded in runs/default/commands.txt and the model card.
# Needs .devdata/real_train.npz (python -m training data --export-real .devdata/real_train.npz).
# Wheels under .whl/ (for a machine without network) are installed to /tmp/site first, if present.
#   OUT=out bash training/slot_run.sh          # env: AE_BUDGET DIFF_BUDGET WORKERS DEVICE DEADLINE EXTRA
set -u
T0=$(date +%s)
el() { echo $(( $(date +%s) - T0 )); }
OUTDIR=${OUT:-/tmp/out}; mkdir -p "$OUTDIR"
PY=${PY:-python3}
AE_BUDGET=${AE_BUDGET:-190}; DIFF_BUDGET=${DIFF_BUDGET:-170}; WORKERS=${WORKERS:-14}
DEADLINE=${DEADLINE:-560}; DEVICE=${DEVICE:-cuda}; CAL_STEPS=${CAL_STEPS:-30}; MIN_STEPS=${MIN_STEPS:-100}; read -r -a EXTRA <<< "${EXTRA:-}"
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 3
  export PYTHONPATH=/tmp/site:$PWD/.whl/site
fi
export PYTHONUNBUFFERED=1
nvidia-smi -L 2>/dev/null
$PY -c "import torch, xarray, dask, numpy; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'xarray', xarray.__version__, 'dask', dask.__version__, 'numpy', numpy.__version__)" || exit 4
COMMON=(--config training/configs/default.json --device "$DEVICE" --no-progress --set data.real_path=.devdata/real_train.npz --set run.data_workers=$WORKERS "${EXTRA[@]}")
steps_for() {  # steps_for SUMMARY BUDGET_S MAX
  $PY -c "import json,sys; s=json.load(open(sys.argv[1]))['s_per_step']; print(max(int(sys.argv[4]), min(int(sys.argv[3]), int(float(sys.argv[2]) / s) // 100 * 100)))" "$@" $MIN_STEPS
}
echo "[$(el)s] calibrating the autoencoder stage"
rm -rf /tmp/cal
$PY -m training autoencoder "${COMMON[@]}" --out /tmp/cal --steps $CAL_STEPS --set autoencoder.disc_start=0 \
  --set autoencoder.warmup_steps=5 --set run.sample_every=0 --set run.checkpoint_every=100000 --set autoencoder.latent_stat_batches=1 || exit 5
AE_STEPS=$(steps_for /tmp/cal/autoencoder/summary.json $AE_BUDGET 30000); DISC_START=$(( AE_STEPS * 6 / 10 ))
echo "[$(el)s] autoencoder: $AE_STEPS steps (disc from $DISC_START)"
timeout -s INT $(( DEADLINE - $(el) - 150 )) $PY -m training autoencoder "${COMMON[@]}" --out runs/default --steps $AE_STEPS --set autoencoder.disc_start=$DISC_START || echo "AE FAILED"
echo "[$(el)s] calibrating the diffusion stage"
$PY -m training diffusion "${COMMON[@]}" --out /tmp/cal --steps $CAL_STEPS --set diffusion.cache_pairs=512 \
  --set diffusion.warmup_steps=5 --set run.sample_every=0 --set run.checkpoint_every=100000 || { echo "DIFFUSION CALIBRATION FAILED"; }
LEFT=$(( DEADLINE - $(el) - 80 )); [ $LEFT -lt $DIFF_BUDGET ] && DIFF_BUDGET=$LEFT
DIFF_STEPS=$(steps_for /tmp/cal/diffusion/summary.json $DIFF_BUDGET 40000 || echo 0)
echo "[$(el)s] diffusion: $DIFF_STEPS steps"
if [ -f runs/default/autoencoder/autoencoder.safetensors ] && [ "$DIFF_STEPS" -gt 0 ]; then
  timeout -s INT $(( DEADLINE - $(el) - 25 )) $PY -m training diffusion "${COMMON[@]}" --out runs/default --steps $DIFF_STEPS || echo "DIFFUSION FAILED"
  $PY -m training export "${COMMON[@]}" --out runs/default --overwrite || echo "EXPORT FAILED"
fi
echo "[$(el)s] packing"
[ -d runs/default/model ] && tar -C runs/default -cf "$OUTDIR/model.tar" model
cp runs/default/autoencoder/autoencoder.safetensors "$OUTDIR/" 2>/dev/null || split -b 15M runs/default/autoencoder/checkpoint.pt "$OUTDIR/ae_checkpoint.part-"
cp runs/default/diffusion/checkpoint.pt "$OUTDIR/diffusion_checkpoint.pt" 2>/dev/null
tar -C runs -czf "$OUTDIR/run_logs.tar.gz" --exclude=checkpoint.pt --exclude=latent_cache.pt --exclude='*.safetensors' --exclude=model default
ls -la "$OUTDIR"; nvidia-smi --query-gpu=name,memory.used --format=csv 2>/dev/null
echo "[$(el)s] done"
