#!/usr/bin/env bash
# The recipe that made models/car_racing/ (V + M with a reward head, and the
# controller C on [z, h]), on 2 CPU cores with no GPU. It follows the path the
# shipped model took (docs/experiments/car_racing.md has every measurement):
#
#   1. runs/car: V, and the round-7 C on z, trained in the dream of an M refitted
#      after each round of collection (the paper's iterative procedure);
#   2. runs/car_s: 1,520 new real episodes (tracks 20,000-21,519), encoded with
#      that V, three of whose collections are driven by controllers trained in
#      Ms fitted on the episodes before them;
#   3. runs/car_s6: the shipped M on all 1,520 episodes, C refined by CMA-ES in
#      its 250-step dreams from real states, then by PPO in the same dreams.
#
#   bash training/car_racing.sh [MODEL_DIR]
#
# MODEL_DIR (default runs/car_racing_model) receives the exported world model and
# controller; pass models/car_racing to replace the shipped weights. Every command
# resumes when rerun. Dead-end rounds nothing shipped descends from (rounds 1, 3
# and 6, and the attempts after round 7) are left out. Budgets given in seconds
# (--seconds) make the kept generation depend on the machine; the comments give
# the generation kept on the 2-core machine. evolve and ppo print the folder they
# wrote (RUN/evolve-<id>, named by the options that shape the controller, so a
# rerun finds it again); the recipe keeps it in a variable.
set -euo pipefail

OUT=${1:-runs/car_racing_model}
R=runs/car
S=runs/car_s
M_ARGS=(--steps 2500 --batch-size 32 --seq-len 300 --lr 0.001 --lr-final 0.00003 --reward-weight 5 --threads 2)
OPEN_LOOP=(--open-loop-steps 10 --open-loop-weight 0.5)

# A run directory of its own that reads $S's encoded episodes (a run.json and a link).
linked_run() {
    mkdir -p "$1"
    cp "$S/run.json" "$1/run.json"
    ln -sfn "$(realpath "$S/latents.npz")" "$1/latents.npz"
}

# One round of runs/car: refit M from scratch on every episode so far, evolve C on
# [z, h] in its dream, and keep both aside as runs/car/round<N>/ (done once; C in
# runs/car/round<N>/evolve).
round() {
    local n=$1 steps=$2 gens=$3 every=$4 c
    [ -d "$R/round$n" ] && return
    dreamgym encode "$R" --threads 2
    dreamgym fit-mdnrnn "$R" --steps "$steps" --batch-size 32 --seq-len 300 --lr 0.001 \
        --lr-final 0.00003 --reward-weight 5 --threads 2
    c=$(dreamgym evolve "$R" --tau 1.0 --generations "$gens" --popsize 64 --trials 16 \
        --eval-every "$every" --eval-rollouts 256 | tail -n 1)
    mkdir -p "$R/round$n"
    mv "$c" "$R/round$n/evolve"
    mv "$R/mdnrnn" "$R/world_model" "$R/round$n/"
}

# ---- 1. runs/car: V and the round-7 C ------------------------------------------
dreamgym collect car_racing --run $R --episodes 360 --workers 2                  # policy: track, ~26 min
dreamgym fit-vae $R --epochs 0.7 --batch-size 100 --lr 0.001 --threads 2          # V, 16.7 min
dreamgym collect car_racing --run $R --episodes 520 --workers 2 --policy fast_track
round 2 1500 13 10
dreamgym collect car_racing --run $R --episodes 620 --workers 2 --controller $R/round2/evolve --noise 0.3
dreamgym collect car_racing --run $R --episodes 920 --workers 2 --policy drive    # 22.2 min
round 4 2500 20 5
dreamgym collect car_racing --run $R --episodes 1020 --workers 2 --controller $R/round4/evolve --noise 0.3
round 5 2500 20 5
dreamgym collect car_racing --run $R --episodes 1120 --workers 2 --controller $R/round5/evolve --noise 0.3
dreamgym collect car_racing --run $R --episodes 1320 --workers 2 --policy explore  # 12.6 min
dreamgym encode $R --threads 2
dreamgym fit-mdnrnn $R "${M_ARGS[@]}"                                              # the round-7 M, 14.6 min
ROUND7_C=$(dreamgym evolve $R --tau 1.0 --inputs z --seed 4 --generations 100 --popsize 64 \
    --trials 16 --eval-every 5 --eval-rollouts 256 --threads 2 --seconds 1200 | tail -n 1)  # kept: 90
dreamgym export $R "$OUT" --controller "$ROUND7_C"                              # V: the shipped one from here on

# ---- 2. runs/car_s: new episodes, encoded with that V ----------------------------
dreamgym collect car_racing --run $S --episodes 100 --workers 2 --seed 20000 --policy drive
dreamgym collect car_racing --run $S --episodes 150 --workers 2 --seed 20000 --policy explore
dreamgym collect car_racing --run $S --episodes 220 --workers 2 --seed 20000 \
    --controller $ROUND7_C --noise 0.3 --noise-space output
dreamgym collect car_racing --run $S --episodes 420 --workers 2 --seed 20000 --policy explore
dreamgym collect car_racing --run $S --episodes 520 --workers 2 --seed 20000 --policy track
dreamgym encode $S --world-model "$OUT" --threads 2
# Two Ms on the 520 episodes (one-step; open-loop K 10), a C on z in each, and their drives.
linked_run runs/car_s1
linked_run runs/car_s3
dreamgym fit-mdnrnn runs/car_s1 "${M_ARGS[@]}" --threads 1                      # ran beside another fit
dreamgym fit-mdnrnn runs/car_s3 "${M_ARGS[@]}" "${OPEN_LOOP[@]}"
Z_ARGS=(--tau 1.0 --inputs z --seed 0 --generations 100 --popsize 64 --trials 16 --eval-every 5
        --eval-rollouts 256 --threads 2 --seconds 1200)
S1_C=$(dreamgym evolve runs/car_s1 "${Z_ARGS[@]}" | tail -n 1)                 # stopped at 68
S3_C=$(dreamgym evolve runs/car_s3 "${Z_ARGS[@]}" | tail -n 1)                 # stopped at 58
dreamgym collect car_racing --run $S --episodes 570 --workers 2 --seed 20000 \
    --controller "$S3_C" --noise 0.3 --noise-space output
dreamgym collect car_racing --run $S --episodes 620 --workers 2 --seed 20000 \
    --controller "$S1_C" --noise 0.3 --noise-space output
dreamgym encode $S --world-model "$OUT" --threads 2
# The same open-loop M on 620 episodes, a C on z in its dreams from real states, and its drives.
linked_run runs/car_s4
dreamgym fit-mdnrnn runs/car_s4 "${M_ARGS[@]}" "${OPEN_LOOP[@]}"
S4_C=$(dreamgym evolve runs/car_s4 --tau 1 --inputs z --real-starts 10 --max-steps 250 --seed 0 \
    --generations 190 --popsize 64 --trials 32 --eval-every 5 --eval-rollouts 256 --threads 2 \
    | tail -n 1)                                                                 # 359 ± 57 on tracks 0-99
dreamgym collect car_racing --run $S --episodes 820 --workers 2 --seed 20000 --policy drive
dreamgym collect car_racing --run $S --episodes 920 --workers 2 --seed 20000 --policy fast_track
dreamgym collect car_racing --run $S --episodes 1020 --workers 2 --seed 20000 \
    --controller $ROUND7_C --noise 0.3 --noise-space output
dreamgym collect car_racing --run $S --episodes 1120 --workers 2 --seed 20000 \
    --controller "$S4_C" --noise 0.3 --noise-space output
dreamgym collect car_racing --run $S --episodes 1220 --workers 2 --seed 20000 --policy explore
dreamgym encode $S --world-model "$OUT" --threads 2

# The previous M (1,220 episodes, runs/car_s5): C on z from the round-7 C, then C on [z, h].
linked_run runs/car_s5
dreamgym fit-mdnrnn runs/car_s5 --steps 3500 --batch-size 32 --seq-len 300 --lr 0.001 \
    --lr-final 0.00003 --reward-weight 5 --threads 2 "${OPEN_LOOP[@]}"               # 14.7 min
S5_Z=$(dreamgym evolve runs/car_s5 --tau 1 --inputs z --init "$ROUND7_C" --sigma0 0.05 \
    --real-starts 10 --max-steps 250 --seed 0 --generations 400 --popsize 64 --trials 32 \
    --eval-every 5 --eval-rollouts 256 --threads 1 --seconds 1500 | tail -n 1)    # C on z (kept: 190)
S5_C=$(dreamgym evolve runs/car_s5 --tau 1 --inputs zh --init "$S5_Z" --sigma0 0.05 \
    --real-starts 10 --max-steps 250 --seed 0 --generations 400 --popsize 64 --trials 32 \
    --eval-every 5 --eval-rollouts 256 --threads 1 --seconds 1200 | tail -n 1)    # C on [z, h] (kept: 146)
# One turn of the paper's iteration: that C drives 300 episodes with noise.
# (When the shipped model was made, collect read h from runs/car_s's own world
# model, an M with open-loop K 30; it now reads the controller's own M.)
dreamgym collect car_racing --run $S --episodes 1520 --workers 2 --seed 20000 \
    --controller "$S5_C" --noise 0.3 --noise-space output
dreamgym encode $S --world-model "$OUT" --threads 2

# ---- 3. runs/car_s6: the shipped M, and C --------------------------------------
linked_run runs/car_s6
dreamgym fit-mdnrnn runs/car_s6 --steps 3500 --batch-size 32 --seq-len 300 --lr 0.001 \
    --lr-final 0.00003 --reward-weight 5 --threads 2 "${OPEN_LOOP[@]}"               # 10.7 min
S6_CMA=$(dreamgym evolve runs/car_s6 --tau 1 --inputs zh --init "$S5_C" --sigma0 0.05 \
    --real-starts 10 --max-steps 250 --seed 0 --generations 1000 --popsize 64 --trials 32 \
    --eval-every 5 --eval-rollouts 256 --threads 1 --seconds 1500 | tail -n 1)    # the CMA-ES C (kept: 145)
S6_PPO=$(dreamgym ppo runs/car_s6 --init "$S6_CMA" --starts real --max-steps 250 \
    --timesteps 10000000 --threads 2 | tail -n 1)                                # 7.1 min (kept: 7.5M steps)
dreamgym export runs/car_s6 "$OUT" --controller "$S6_PPO"

# Scores: real tracks 0-99 and 100-199, first-frame dreams, dreams from real states.
dreamgym evaluate "$OUT" --episodes 100 --workers 2
dreamgym evaluate "$OUT" --episodes 100 --workers 2 --seed 100
dreamgym evaluate "$OUT" --dream --tau 1.0 --episodes 100
dreamgym evaluate "$OUT" --dream --tau 1.0 --episodes 256 --starts real --max-steps 250
