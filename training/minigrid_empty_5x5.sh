#!/usr/bin/env bash
# The recipe that made models/minigrid_empty_5x5/ (V + M and the controller C): the
# `cpu` preset that dreamgym scales to MiniGrid-Empty-5x5-v0 (one torch thread, as on a
# shared 2-core machine), then one round of the paper's iterative procedure. About 90
# minutes on 2 shared CPU cores. Each command resumes when rerun; the script as a whole
# runs once (round 2 moves round 1's M and C aside).
#
#   bash training/minigrid_empty_5x5.sh [RUN_DIR] [MODEL_DIR]
#
# Needs `pip install 'dreamgym[minigrid]'`. RUN_DIR (default runs/minigrid) receives
# episodes, checkpoints and metrics; MODEL_DIR (default runs/minigrid_model) the export.
set -euo pipefail

RUN=${1:-runs/minigrid}
OUT=${2:-runs/minigrid_model}
GAME=minigrid:MiniGrid-Empty-5x5-v0

# Round 1: 2,000 random episodes, V on half an epoch, M for 3,000 steps, C by CMA-ES.
dreamgym collect "$GAME" --run "$RUN" --episodes 2000 --workers 2                  # 6.8 min
dreamgym fit-vae "$RUN" --epochs 0.5 --batch-size 100 --lr 0.001 --threads 1       # 24.1 min
dreamgym encode "$RUN" --threads 1                                                 # 3.2 min
dreamgym fit-mdnrnn "$RUN" --steps 3000 --batch-size 32 --seq-len 100 --lr 0.001 \
    --lr-final 0.00003 --reward-weight 5.0 --threads 1                             # 22.4 min
EVOLVE=(--tau 1.0 --generations 50 --popsize 64 --trials 16 --eval-every 10 --eval-rollouts 512
        --threads 1)
C1=$(dreamgym evolve "$RUN" "${EVOLVE[@]}" | tail -n 1)                            # 4.6 min
dreamgym evaluate "$C1" --episodes 100 --workers 2   # 0.0: it walks into a wall forever

# Round 2: 400 real episodes of that C with random-action noise show M what the wall
# pays; round 1's M and C move aside and M is fitted again on all 2,400 episodes.
dreamgym collect "$GAME" --run "$RUN" --episodes 2400 --workers 2 --controller "$C1" \
    --noise 1.0                                                                    # 2.8 min
dreamgym encode "$RUN" --threads 1                                                 # 0.3 min
mkdir -p "$RUN/round1" && mv "$RUN/mdnrnn" "$RUN/world_model" "$C1" "$RUN/round1/"
dreamgym fit-mdnrnn "$RUN" --steps 3000 --batch-size 32 --seq-len 100 --lr 0.001 \
    --lr-final 0.00003 --reward-weight 5.0 --threads 1                             # 19.6 min
C2=$(dreamgym evolve "$RUN" "${EVOLVE[@]}" | tail -n 1)                            # 1.7 min
dreamgym evaluate "$C2" --episodes 100 --workers 2   # 0.721 ± 0.162 (random: 0.195)
dreamgym export "$RUN" "$OUT" --controller "$C2"
