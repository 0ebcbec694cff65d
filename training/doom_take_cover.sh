#!/usr/bin/env bash
# The recipe that made models/doom_take_cover/ (V + M and the controller C), on
# 2 CPU cores with no GPU: about 80 minutes from no data to C scored on 100 real
# episodes. Every command resumes when rerun, so a killed recipe is rerun as is.
#
#   bash training/doom_take_cover.sh [RUN_DIR] [MODEL_DIR]
#
# RUN_DIR (default runs/doom) receives episodes, checkpoints and metrics;
# MODEL_DIR (default runs/doom_model, so the shipped folder is not overwritten)
# receives the exported world model and controller. Pass models/doom_take_cover
# to replace the shipped weights. The sizes are the `cpu` preset of
# training/presets/doom_take_cover.json.
set -euo pipefail

RUN=${1:-runs/doom}
OUT=${2:-runs/doom_model}

# World model: 2,400 real episodes (seeds 0-2399), V on a quarter epoch, M for 3,000 steps.
dreamgym collect doom_take_cover --run "$RUN" --episodes 2400 --workers 2        # 3.2 min
dreamgym fit-vae "$RUN" --epochs 0.25 --batch-size 100 --lr 0.001 --threads 2      # 9.2 min
dreamgym encode "$RUN" --threads 2                                                 # 3.9 min
dreamgym fit-mdnrnn "$RUN" --steps 3000 --batch-size 32 --seq-len 300 --lr 0.001 \
    --lr-final 0.00003 --threads 2                                                 # 32.8 min

# Controller: CMA-ES only inside the dream at tau 1.15 (the kept CMA mean: generation 20).
# examples/tau_sweep.py --taus 1.15 --generations 30 runs the same search.
# evolve prints the folder it wrote (RUN/evolve-<id>; the same command finds it again).
C=$(dreamgym evolve "$RUN" --tau 1.15 --generations 30 --popsize 64 --trials 16 \
    --eval-every 10 --eval-rollouts 512 --seed 0 --threads 2 | tail -n 1)          # 27 min

dreamgym export "$RUN" "$OUT" --controller "$C"

# Scores: 100 real episodes (game seeds 0-99) and 100 dreams at tau 1.15.
dreamgym evaluate "$OUT" --episodes 100 --workers 2                                # 3.7 min
dreamgym evaluate "$OUT" --episodes 100 --dream
