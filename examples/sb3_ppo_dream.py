"""Train an SB3 agent (PPO or A2C) entirely inside a dream, then score it in the real game.

    pip install 'dreamgym[doom,carracing,sb3]'
    python examples/sb3_ppo_dream.py                        # Doom: PPO MlpPolicy from scratch
    python examples/sb3_ppo_dream.py --env DreamCarRacing-v0 # CarRacing: the same, its recipe
    python examples/sb3_ppo_dream.py --algo a2c              # A2C through the same adapter
    python examples/sb3_ppo_dream.py --obs-mode pixels       # CnnPolicy on V's decoded frames
    # PPO refines the shipped CMA-ES controller itself; the best C (by dream score) is saved
    python examples/sb3_ppo_dream.py --env DreamCarRacing-v0 --starts real \\
        --max-episode-steps 250 --init car_racing --save runs/ppo_c --timesteps 5000000

Each game has a recipe (``RECIPES``: dreams, rollout length, minibatch, epochs, the
noise's initial log std, steps, dream starts and length); a flag overrides one of
its values. The dreams step as one batched tensor computation (``gym.make_vec``
with the native ``DreamVectorEnv``), wrapped for SB3 by ``dreamgym.sb3.as_vec_env``.
The trained policy then plays ``dreamgym.make_real(ENV)``, the real game seen
through the same V and M, so it runs unchanged. ``--starts real`` starts each dream
from a real state of a recorded drive (the CarRacing world model's bank).

``--policy controller`` (implied by ``--init``) trains the paper's C itself with
PPO (``dreamgym.sb3.ControllerActorCritic``): ``--init`` starts it from a trained
controller, and every ``--check-every`` steps the C is scored in the same 256
dreams and the best is written to ``--save`` as a controller folder, which
``dreamgym evaluate --controller DIR`` scores on the real tracks. ``--save-agent
ZIP`` saves an SB3 agent (every ``--checkpoint-every`` steps too; the same command run
again continues it), which ``dreamgym evaluate SOURCE --agent ZIP`` scores in dreams
and real episodes (loaded without unpickling). Real episode i uses the game
seed ``--seed`` + i.

``--obs-mode pixels`` trains SB3's ``CnnPolicy`` on the dream's 64x64 frames (V's
decodings of z) with ``PIXEL_RECIPE``'s rollout, and scores it in the real game
seen the same way (``make_real(..., obs_mode="pixels")``: V's reconstruction of
each real frame).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import gymnasium as gym
import numpy as np

import dreamgym
from dreamgym.reports import summary
from dreamgym.sb3 import as_vec_env
from dreamgym.transfer import score_real

REAL = {
    "DreamDoom-v0": "real VizDoom (random policy ~210, solved: 750)",
    "DreamCarRacing-v0": "real CarRacing-v3 (solved: 900)",
}
RECIPES = {  # SB3's defaults except these; measured in docs/agents.md
    "DreamDoom-v0": dict(
        num_envs=32, n_steps=64, batch_size=512, n_epochs=4, log_std_init=0.0, ent_coef=0.01,
        timesteps=2_000_000, starts="first", max_episode_steps=None, hazard=3.0,
    ),
    "DreamCarRacing-v0": dict(
        num_envs=32, n_steps=64, batch_size=512, n_epochs=4, log_std_init=-1.0, ent_coef=0.0,
        timesteps=2_000_000, starts="first", max_episode_steps=None, hazard=0.0,
    ),
}  # fmt: skip
PIXEL_RECIPE = dict(num_envs=16, n_steps=128, batch_size=256)  # V decodes every frame: fewer dreams
# the hyperparameters an agent saved at --save-agent must share with the run that continues it
RESUMED = ("n_envs", "n_steps", "batch_size", "n_epochs", "ent_coef", "learning_rate")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--env", default="DreamDoom-v0", choices=sorted(REAL), help="dream id")
    p.add_argument("--algo", default="ppo", choices=["ppo", "a2c"], help="SB3 algorithm")
    p.add_argument(
        "--world-model", default=None, help="world-model folder (default: the shipped weights)"
    )
    p.add_argument("--timesteps", type=int, help="steps in the dream (default: the recipe's)")
    p.add_argument("--num-envs", type=int, help="dreams stepped as one batch (recipe's)")
    p.add_argument("--n-steps", type=int, help="steps per dream between updates (recipe's)")
    p.add_argument("--batch-size", type=int, help="PPO's minibatch (recipe's)")
    p.add_argument("--n-epochs", type=int, help="PPO's epochs per update (recipe's)")
    p.add_argument("--ent-coef", type=float, help="entropy bonus (recipe's)")
    p.add_argument("--episodes", type=int, default=20, help="real episodes to score (0: none)")
    p.add_argument("--tau", type=float, default=None, help="dream temperature (default: the id's)")
    p.add_argument("--starts", choices=["first", "real"], help="dream starts (recipe's)")
    p.add_argument("--max-episode-steps", type=int, help="dream length (recipe's; none: game's)")
    p.add_argument(
        "--hazard", type=float,
        help="the dreams also end with this many times M's chance of dying (recipe's)",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="where the dreams and the agent run (cuda)")
    p.add_argument(
        "--threads", type=int, default=1,
        help="torch threads (1: batches of a few dozen dreams step fastest on one)",
    )  # fmt: skip
    p.add_argument(
        "--policy", default=None, choices=["mlp", "controller"],
        help="SB3's MlpPolicy or the paper's C as PPO's actor (default: mlp; controller "
        "with --init)",
    )  # fmt: skip
    p.add_argument("--init", default=None, help="controller folder or shipped name to start from")
    p.add_argument("--hidden", type=int, default=0, help="hidden tanh units of a new C")
    p.add_argument(
        "--log-std-init", type=float, default=None,
        help="initial log std of the noise (default: the recipe's; with --policy controller, "
        "the ppo stage's)",
    )  # fmt: skip
    p.add_argument(
        "--learning-rate", type=float, default=None,
        help="Adam's step size (default: SB3's; with --policy controller, the ppo stage's)",
    )  # fmt: skip
    p.add_argument("--save", default=None, help="folder for the best C (--policy controller)")
    p.add_argument(
        "--save-agent", default=None,
        help="SB3 zip to save the trained agent to (score it: dreamgym evaluate --agent ZIP); "
        "if it exists, the run continues it up to --timesteps",
    )  # fmt: skip
    p.add_argument(
        "--checkpoint-every", type=int, default=100_000,
        help="steps between saves of the agent to --save-agent as it trains (0: at the end only)",
    )  # fmt: skip
    p.add_argument("--check-every", type=int, default=500_000, help="steps between dream checks")
    p.add_argument("--check-trials", type=int, default=256, help="dreams per check")
    p.add_argument(
        "--obs-mode", default="latent", choices=["latent", "pixels"],
        help="what the agent sees: [z, h] (MlpPolicy) or V's 64x64 frames (CnnPolicy)",
    )  # fmt: skip
    args = p.parse_args()
    from dreamgym.train.common import check_device

    try:
        check_device(args.device)
    except ValueError as e:
        p.error(str(e))
    args.policy = args.policy or ("controller" if args.init else "mlp")
    if args.policy == "mlp" and (args.init or args.save or args.hidden):
        p.error("--init, --save and --hidden need --policy controller")
    if args.policy == "controller" and args.algo != "ppo":
        p.error("--policy controller trains with --algo ppo")
    if args.save_agent and not args.save_agent.endswith(".zip"):
        args.save_agent += ".zip"  # where SB3 saves it
    if args.policy == "controller" and args.save_agent and Path(args.save_agent).exists():
        p.error(f"--save-agent: {args.save_agent} exists, and PPO on C does not continue an "
                "agent; delete it or name another")  # fmt: skip
    if args.policy == "controller" and args.obs_mode == "pixels":
        p.error("--policy controller reads [z, h]; --obs-mode pixels trains a CnnPolicy")
    if args.obs_mode == "pixels":
        for key, value in PIXEL_RECIPE.items():
            if getattr(args, key) is None:
                setattr(args, key, value)
    if args.policy == "controller":  # the recipe of `dreamgym ppo` (PPOConfig's defaults)
        from dreamgym.train.ppo import PPOConfig

        stage = PPOConfig()
        args.learning_rate = args.learning_rate or stage.learning_rate
        if args.log_std_init is None:
            args.log_std_init = stage.log_std_init
    for key, value in RECIPES[args.env].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    from dreamgym.dream_core import check_hazard

    try:
        args.hazard = check_hazard(args.hazard)
    except (TypeError, ValueError) as e:
        p.error(str(e))
    return args


def make_model(args, venv, policy_kwargs):
    """The SB3 model of ``args.algo`` on ``venv`` with the recipe's hyperparameters."""
    from stable_baselines3 import A2C, PPO  # optional dependency: pip install 'dreamgym[sb3]'

    from dreamgym.sb3 import ControllerActorCritic

    common = dict(policy_kwargs=policy_kwargs, seed=args.seed, device=args.device, verbose=0)
    if args.learning_rate is not None:
        common["learning_rate"] = args.learning_rate
    sb3_policy = "CnnPolicy" if args.obs_mode == "pixels" else "MlpPolicy"
    if args.algo == "a2c":  # SB3's A2C defaults: 5 steps per dream between updates
        return A2C(sb3_policy, venv, **common)
    policy = ControllerActorCritic if args.policy == "controller" else sb3_policy
    return PPO(
        policy, venv, n_steps=args.n_steps, batch_size=args.batch_size,
        n_epochs=args.n_epochs, ent_coef=args.ent_coef, **common,
    )  # fmt: skip


def main() -> None:
    args = parse_args()
    import torch

    from dreamgym.sb3 import DreamCheckpoint, set_controller

    torch.set_num_threads(args.threads)

    kwargs = {"tau": args.tau} if args.tau is not None else {}
    kwargs["hazard"] = args.hazard
    if args.max_episode_steps is not None:
        kwargs["max_episode_steps"] = args.max_episode_steps
    dreams = gym.make_vec(
        args.env, num_envs=args.num_envs, world_model=args.world_model, starts=args.starts,
        obs_mode=args.obs_mode, device=args.device, **kwargs,
    )  # fmt: skip
    wm = dreams.unwrapped.world_model
    init = dreamgym.load_controller(args.init) if args.init else None
    policy_kwargs, callback = {"log_std_init": args.log_std_init}, None
    if args.policy == "controller":
        cfg = init.controller.config if init else None
        hidden = cfg.hidden if cfg else args.hidden
        policy_kwargs |= {"hidden": hidden, "bias": wm.game.controller_bias}
        outputs = cfg.out_dim if cfg else 0
        venv = as_vec_env(dreams, actions="controller", outputs=outputs)
        save = args.save or "runs/ppo_controller"
        # trained in dreams with --hazard; the checks keep C by the paper's dream
        meta = {"trainer": "ppo", "init": args.init, "starts": args.starts, "hazard": args.hazard}
        callback = DreamCheckpoint(
            wm, save, args.check_every, args.check_trials, dreams.unwrapped.tau,
            args.max_episode_steps, args.starts, 0, meta,  # the same dreams for every seed
        )  # fmt: skip
    else:
        venv = as_vec_env(dreams)
    model = make_model(args, venv, policy_kwargs)
    model.dream = dream_settings(args, wm, dreams.unwrapped.tau)  # saved in the zip's data
    if init is not None:
        set_controller(model.policy, init.params)
    resumed = bool(args.save_agent) and Path(args.save_agent).exists()
    if resumed:
        try:
            resume(model, args.save_agent)
        except (OSError, ValueError, RuntimeError) as e:  # RunDirError, AgentError: ValueErrors
            raise SystemExit(f"--save-agent: {e}") from None
    if model.num_timesteps >= args.timesteps:
        print(f"{args.save_agent} has {model.num_timesteps:,} steps (--timesteps "
              f"{args.timesteps:,}): nothing to train")  # fmt: skip
    else:
        train(model, args, callback, resumed, dreams.unwrapped.tau)

    if args.policy == "controller":  # the best C by dream score, as saved
        best = dreamgym.load_controller(callback.folder)
        print(f"best C in the dream: {callback.best:.1f} (saved in {callback.folder})")
        act = best
    else:

        def act(obs):
            return model.predict(obs, deterministic=True)[0]

    if args.episodes < 1:
        return

    from tqdm import tqdm

    bar = tqdm(total=args.episodes, desc="real episodes", unit="ep")
    returns = score_real(
        act, args.env, args.episodes, args.seed, progress=bar.update, world_model=wm,
        obs_mode=args.obs_mode,
    )  # fmt: skip
    bar.close()
    s = summary(returns)
    ci = f" (95% CI {s['ci95'][0]:.0f} to {s['ci95'][1]:.0f})" if s["ci95"] else ""
    print(f"{REAL[args.env]} over {len(returns)} episodes: {s['mean']:.0f} +- {s['std']:.0f}{ci}")


def train(model, args, callback, resumed: bool, tau: float) -> None:
    """``model.learn`` up to ``--timesteps`` with a progress bar, saving the agent every
    ``--checkpoint-every`` steps and at the end; prints the steps, time and dream score."""
    start = time.perf_counter()
    callbacks = [progress_bar(args.timesteps, model.num_timesteps)]
    if args.save_agent and args.checkpoint_every > 0:
        callbacks.append(checkpoint(args.save_agent, args.checkpoint_every))
    callbacks += [callback] if callback else []
    model.learn(
        total_timesteps=args.timesteps - model.num_timesteps, callback=callbacks,
        reset_num_timesteps=not resumed,
    )  # fmt: skip
    minutes = (time.perf_counter() - start) / 60
    dream_returns = [ep["r"] for ep in model.ep_info_buffer]
    print(f"{model.num_timesteps:,} steps in {minutes:.1f} min", end="")
    if dream_returns:
        print(
            f"; dream (last {len(dream_returns)} episodes, tau {tau}): "
            f"{np.mean(dream_returns):.0f} +- {np.std(dream_returns):.0f}",
            end="",
        )
    print()
    if args.save_agent:
        save_agent(model, args.save_agent)
        print(f"agent saved to {args.save_agent}")


def dream_settings(args, wm, tau: float) -> dict:
    """The dream an agent trains in and how it sees it: saved in its zip, so that a run
    continuing the agent checks it trains in the same dream."""
    from dreamgym.shipped import shipped_dir
    from dreamgym.train.provenance import file_digest
    from dreamgym.world_model import WEIGHTS_FILE

    folder = Path(args.world_model) if args.world_model else shipped_dir(wm.game.name)
    return {"env": args.env, "algo": args.algo, "obs_mode": args.obs_mode,
            "world_model": file_digest(folder / WEIGHTS_FILE), "tau": tau,
            "starts": args.starts, "max_episode_steps": args.max_episode_steps,
            "hazard": args.hazard}  # fmt: skip


def resume(model, path: str) -> None:
    """Load the agent at ``path`` into ``model``: its weights and Adam's state (each ``.pth``
    read with ``torch.load(weights_only=True)``; nothing of the zip is unpickled) and its
    step count, after checking it was trained with this run's settings and dream."""

    from dreamgym.agents import algo_of, obs_mode_of, read_sb3_data, read_sb3_tensors
    from dreamgym.train.common import check_resume

    data = read_sb3_data(path)
    started = {key: data[key] for key in RESUMED if key in data}
    started |= {"algo": algo_of(data, Path(path)), "obs_mode": obs_mode_of(path)}
    if data.get("dream"):  # an agent saved before the dream was recorded: nothing to check
        started |= {"hazard": 0.0} | data["dream"]  # before hazard was recorded, it was 0
    now = {key: getattr(model, key) for key in RESUMED if hasattr(model, key)}  # A2C: no epochs
    check_resume(Path(path), started, now | model.dream)
    params = {name.removesuffix(".pth"): read_sb3_tensors(path, name, model.device)
              for name in ("policy.pth", "policy.optimizer.pth")}  # fmt: skip
    model.set_parameters(params, exact_match=True, device=model.device)
    model.num_timesteps = int(data["num_timesteps"])
    print(f"continuing {path} from {model.num_timesteps:,} steps")


def save_agent(model, path: str) -> None:
    """``model.save(path)`` through a temporary file, so a killed job leaves the last whole
    agent."""
    from dreamgym._io import atomic_path

    with atomic_path(path) as tmp:
        model.save(tmp)


def checkpoint(path: str, every: int):
    """Save the agent to ``path`` every ``every`` steps, as a rollout starts: the weights
    then hold every step counted (a run of the same command continues from there)."""
    from stable_baselines3.common.callbacks import BaseCallback
    from tqdm import tqdm

    class Checkpoint(BaseCallback):
        def _on_training_start(self) -> None:
            self.saved = self.num_timesteps

        def _on_rollout_start(self) -> None:  # after the last update, before new steps
            if self.num_timesteps - self.saved < every:
                return
            save_agent(self.model, path)
            self.saved = self.num_timesteps
            returns = [ep["r"] for ep in self.model.ep_info_buffer]
            score = f"{np.mean(returns):.0f} +- {np.std(returns):.0f}" if returns else "-"
            tqdm.write(
                f"{self.num_timesteps:,} steps: saved to {path}; dream, last "
                f"{len(returns)} episodes: {score}"
            )

        def _on_step(self) -> bool:
            return True

    return Checkpoint()


def progress_bar(total: int, done: int = 0):
    """A tqdm bar over the steps SB3 takes (SB3's own needs the ``rich`` package)."""
    from stable_baselines3.common.callbacks import BaseCallback
    from tqdm import tqdm

    class Bar(BaseCallback):
        def _on_training_start(self) -> None:
            self.bar = tqdm(
                total=total, initial=done, unit="step", unit_scale=True, desc="dream steps",
                mininterval=2,
            )  # fmt: skip

        def _on_step(self) -> bool:
            self.bar.update(self.training_env.num_envs)
            return True

        def _on_training_end(self) -> None:
            self.bar.close()

    return Bar()


if __name__ == "__main__":
    main()
