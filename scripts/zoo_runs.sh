#!/usr/bin/env bash
# The long demo-zoo trainings of issue 38, (re)started with one command:
#
#   scripts/zoo_runs.sh start    # start every run that is neither running nor finished (resumes OUT/last.pt)
#   scripts/zoo_runs.sh status   # per run: running / stopped / finished, the last checkpoint line of its log
#   scripts/zoo_runs.sh stop     # SIGTERM each run: it finishes its step, checkpoints and exits
#   scripts/zoo_runs.sh eval [N] # snapshot each run's last.pt to RUN/snapshot (fp16 + config.json, a zoo folder)
#                                # and measure its PSNR / codebook usage on the first N (500) CIFAR-10 test images
#   scripts/zoo_runs.sh export NAME  # the run's last.pt as its zoo folder (fp16 + config.json; a KL VAE's
#                                # scale_factor measured), then a tokenizer's PSNR on all 10,000 test images: commit
#                                # it with a TRAINING.md (command, metrics) when it beats the committed one
#
# Every run is niced (19), single-threaded (--threads 1, OMP_NUM_THREADS=1), started with setsid nohup so it
# outlives the shell, and logs to RUN/train.log. Run folders live in $VARGEN_RUNS (default ~/.cache/vargen-runs,
# outside the work tree, so they survive a fresh checkout on the same machine). A run folder with last.pt is
# resumed (model, optimiser, data order and RNG: `vargen train` resumes OUT/last.pt by itself); without one
# the run starts from the best weights committed so far (its zoo folder, e.g. vargen/zoo/cifar10-msvq-v2) or,
# before any was committed, from the recipe's starting point. The flags of a run never change between restarts.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUNS=${VARGEN_RUNS:-$HOME/.cache/vargen-runs}
DATA=${VARGEN_DATA:-$REPO/../shared/data/cifar10/cifar10-jpeg.tar.gz}
VARGEN=${VARGEN_BIN:-$REPO/.venv/bin/vargen}
ZOO=$REPO/vargen/zoo

# name | committed zoo folder (fine-tune start when the run folder is gone) | recipe start (none: fresh) | flags
RUN_NAMES=(cifar10-msvq-v2 cifar10-kl-v2 cifar10-mar-v2 cifar10-var-v2)
declare -A COMMITTED=([cifar10-msvq-v2]=$ZOO/cifar10-msvq-v2 [cifar10-kl-v2]=$ZOO/cifar10-kl-v2
                      [cifar10-mar-v2]=$ZOO/cifar10-mar-v2-target [cifar10-var-v2]=$ZOO/cifar10-var-v2-drafter)
declare -A START=([cifar10-msvq-v2]=$ZOO/cifar10-msvq [cifar10-kl-v2]=$ZOO/cifar10-kl [cifar10-mar-v2]=
                  [cifar10-var-v2]=)
# a run over another run's tokenizer reads a copy of its committed folder outside the work tree (the trainer caches
# the encoded training set beside the tokenizer); the run waits until the finished run is committed
declare -A NEEDS=([cifar10-mar-v2]=cifar10-kl-v2 [cifar10-var-v2]=cifar10-msvq-v2)
MAR_V2='"encoder_embed_dim":192,"encoder_depth":3,"encoder_num_heads":4,"decoder_embed_dim":192,"decoder_depth":3,"decoder_num_heads":4,"buffer_size":16,"diffloss_d":3,"diffloss_w":256,"num_sampling_steps":"50","attn_dropout":0.0,"proj_dropout":0.0'
declare -A FLAGS=(
  # VAR's multi-scale VQVAE, cifar10-msvq's architecture with 8-dimensional codes (was 16) and 1,024 of them (was
  # 512); the encoder and decoder bodies start from cifar10-msvq, dead-code restarts every 250 steps, 20,000
  # steps of batch 32.
  [cifar10-msvq-v2]="var-vqvae --steps 20000 --batch-size 32 --lr 3e-4 --warmup 200 --restart-every 250 --save-every 500 --config {\"vocab_size\":1024,\"z_channels\":8}"
  # MAR's KL VAE, same architecture as cifar10-kl (4 latent channels at 8x8), 20,000 steps of batch 32.
  [cifar10-kl-v2]="kl-vae --steps 20000 --batch-size 32 --lr 3e-4 --warmup 200 --kl-weight 1e-6 --save-every 500"
  # MAR over cifar10-kl-v2's latents: cifar10-mar-target's recipe, wider (192) and deeper (3 + 3 blocks), a
  # 256-wide diffusion MLP, 10,000 steps of batch 64 (cifar10-mar-target: 1,600)
  [cifar10-mar-v2]="mar --steps 10000 --batch-size 64 --lr 1e-3 --warmup 200 --ema 0.999 --save-every 200 --vae $RUNS/cifar10-kl-v2-vae --config {$MAR_V2}"
  # VAR over cifar10-msvq-v2's tokens: cifar10-var-drafter's recipe, deeper (8) and wider (192), 8,000 steps of
  # batch 64 (cifar10-var-drafter: 1,400)
  [cifar10-var-v2]="var --steps 8000 --batch-size 64 --lr 1e-3 --warmup 200 --save-every 200 --vqvae $RUNS/cifar10-msvq-v2-vae --config {\"depth\":8,\"embed_dim\":192,\"num_heads\":4,\"attn_l2_norm\":true,\"cond_drop_rate\":0.1}"
)

pid_alive() { [[ -f $1/pid ]] && kill -0 "$(cat "$1/pid")" 2>/dev/null; }

start() {
  local name=$1 out=$RUNS/$1 init
  if pid_alive "$out"; then echo "$name: running (pid $(cat "$out/pid"))"; return; fi
  if [[ -f $out/model.safetensors ]]; then echo "$name: finished ($out/model.safetensors)"; return; fi
  local need=${NEEDS[$name]:-}
  if [[ -n $need ]]; then
    local total committed
    total=$(grep -o -- '--steps [0-9]*' <<< "${FLAGS[$need]}" | grep -o '[0-9]*$')
    committed=$(grep -o '"step": [0-9]*' "${COMMITTED[$need]}/config.json" 2>/dev/null | grep -o '[0-9]*$' || true)
    if [[ $committed != "$total" ]]; then
      echo "$name: waits for $need's finished run (step $total) to be committed (committed: ${committed:-none})"; return
    fi
    if [[ ! -f $RUNS/$need-vae/model.safetensors ]]; then
      mkdir -p "$RUNS/$need-vae" && cp "${COMMITTED[$need]}"/{model.safetensors,config.json} "$RUNS/$need-vae/"
    fi
  fi
  mkdir -p "$out"
  init=${START[$name]}
  if [[ ! -f $out/last.pt && -f ${COMMITTED[$name]}/model.safetensors ]]; then init=${COMMITTED[$name]}; fi
  # shellcheck disable=SC2086  # FLAGS holds several words on purpose
  local cmd=("$VARGEN" train ${FLAGS[$name]} --data "$DATA" --out "$out" --threads 1)
  [[ -n $init ]] && cmd+=(--init "$init")
  if [[ -f $out/last.pt ]]; then echo "$name: resuming $out/last.pt"; else echo "$name: new run from ${init:-scratch}"; fi
  echo "$(date -Is) ${cmd[*]}" >> "$out/commands.txt"
  cd "$REPO"
  OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 setsid nohup nice -n 19 "${cmd[@]}" >> "$out/train.log" 2>&1 < /dev/null &
  echo $! > "$out/pid"  # setsid, nohup and nice exec: this is the trainer's own pid
  # setsid puts the run in its own scheduler autogroup, where nice alone does not yield to other sessions' work
  echo 19 > "/proc/$(cat "$out/pid")/autogroup" 2>/dev/null || true
  echo "$name: started pid $(cat "$out/pid"), log $out/train.log"
}

status() {
  local name=$1 out=$RUNS/$1 state=stopped
  pid_alive "$out" && state="running (pid $(cat "$out/pid"))"
  [[ -f $out/model.safetensors ]] && state=finished
  echo "$name: $state"
  [[ -f $out/train.log ]] && grep -ao "step [0-9]*/[0-9]*: checkpointed.*" "$out/train.log" | tail -n 3 | sed 's/^/  /' || true
}

stop() {
  local name=$1 out=$RUNS/$1
  if pid_alive "$out"; then kill -TERM "$(cat "$out/pid")" && echo "$name: asked to checkpoint and stop"; else echo "$name: not running"; fi
}

evaluate() {
  local name=$1 out=$RUNS/$1 limit=$2
  if [[ ! -f $out/last.pt ]]; then echo "$name: no checkpoint yet"; return; fi
  cd "$REPO"
  OMP_NUM_THREADS=1 nice -n 19 "$REPO/.venv/bin/python" -c \
    'import sys; from vargen.train.common import snapshot_run; snapshot_run(sys.argv[1], sys.argv[1] + "/snapshot")' "$out"
  echo "$name: step $(grep -o '"step": [0-9]*' "$out/snapshot/config.json" | grep -o '[0-9]*$')"
  if grep -q '"type": "mar"' "$out/snapshot/config.json"; then return; fi  # a generator: no PSNR
  OMP_NUM_THREADS=1 nice -n 19 "$VARGEN" measure psnr --tokenizer "$out/snapshot" --data "$DATA" --split test \
    --limit "$limit" --threads 1
}

export_run() {
  local name=$1 out=$RUNS/$1 dest=${COMMITTED[$1]}
  cd "$REPO"
  OMP_NUM_THREADS=1 nice -n 19 "$REPO/.venv/bin/python" - "$out" "$dest" "$DATA" <<'PY'
import json, sys
from pathlib import Path
from vargen.train.common import snapshot_run
run, dest, data = sys.argv[1:]
snapshot_run(run, dest)
if json.loads((Path(dest) / "config.json").read_text())["type"] == "kl_vae":
    from vargen.train.mar import store_scale_factor
    print("scale_factor", store_scale_factor(dest, data))
PY
  echo "$name: step $(grep -o '"step": [0-9]*' "$dest/config.json" | grep -o '[0-9]*$') -> $dest"
  if grep -q '"type": "mar"' "$dest/config.json"; then return; fi  # a generator: its FID is the report's
  OMP_NUM_THREADS=1 nice -n 19 "$VARGEN" measure psnr --tokenizer "$dest" --data "$DATA" --split test --threads 1
}

case ${1:-status} in
  start|status|stop) for n in "${RUN_NAMES[@]}"; do "$1" "$n"; done ;;
  eval) for n in "${RUN_NAMES[@]}"; do evaluate "$n" "${2:-500}"; done ;;
  export) [[ -n ${COMMITTED[${2:-}]:-} ]] || { echo "usage: $0 export ${RUN_NAMES[*]}" >&2; exit 2; }; export_run "$2" ;;
  *) echo "usage: $0 start|status|stop|eval [N]|export NAME" >&2; exit 2 ;;
esac
