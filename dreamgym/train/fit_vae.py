"""Stage 2: train V on the collected frames, streaming from the shards.

Memory is bounded by ``buffer_episodes`` (it does not grow with the dataset).
Checkpoints are written atomically every ``checkpoint_every`` steps; a rerun
resumes at the same epoch and batch without re-reading the batches already done.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from dreamgym import data
from dreamgym._io import log_metrics
from dreamgym.train import provenance, search
from dreamgym.train.common import (
    check_finite,
    check_options,
    check_resume,
    check_weights,
    checkpoint_path,
    load_checkpoint,
    module_state,
    module_tensors,
    open_run,
    optimizer_state,
    optimizer_tensors,
    save_checkpoint,
    save_config,
    set_threads,
)
from dreamgym.vae import ConvVAE, VAEConfig, frames_to_tensor, vae_loss

VAE_DIR = "vae"


@dataclass
class FitVAEConfig:
    """Settings of the ``fit-vae`` stage: V on the run's episodes."""

    z_dim: int | None = None
    """Latent size (None: the game's)."""
    epochs: float = 1.0
    """Passes over the data; fractions allowed (e.g. 0.5 = half the episodes' frames)."""
    batch_size: int = 100
    """Frames per optimizer step (the paper: 100)."""
    lr: float = 1e-3
    """Adam learning rate (the paper: 1e-4 for 10 epochs of 3M frames)."""
    kl_tolerance: float = 0.5
    """The KL term is floored at ``kl_tolerance * z_dim`` nats per frame (the paper: 0.5)."""
    buffer_episodes: int = 32
    """Episodes held in memory at once (their frames are shuffled together)."""
    checkpoint_every: int = 200
    """Steps between atomic checkpoints."""
    seed: int = 0
    """Seed of the frame order and of the latent samples (not of the initial weights)."""
    device: str = "cpu"
    """Torch device (``cpu``, ``cuda``, ``cuda:1``)."""
    threads: int | None = None
    """Torch threads of this process (None: torch's default)."""


def _epoch_plan(rows: list[dict], cfg: FitVAEConfig, epoch: int):
    """The episode order of one epoch and the number of batches each buffer yields."""
    rng = np.random.default_rng([cfg.seed, epoch])
    order = rng.permutation(len(rows))
    buffers = [
        order[i : i + cfg.buffer_episodes] for i in range(0, len(order), cfg.buffer_episodes)
    ]
    counts = [sum(rows[j]["frames"] for j in b) // cfg.batch_size for b in buffers]
    return buffers, counts


def _check(config: FitVAEConfig) -> None:
    check_options(
        config,
        positive=("z_dim", "epochs", "batch_size", "lr", "buffer_episodes", "checkpoint_every",
                  "threads"),
        at_least_zero=("kl_tolerance",),
    )  # fmt: skip


def run(config: FitVAEConfig, run_dir) -> Path:
    """Train V on the run's episodes (a rerun resumes); return ``run_dir/vae``."""
    _check(config)
    run_dir, game = open_run(run_dir)
    set_threads(config.threads)
    from dreamgym.games import get_game

    spec = get_game(game)
    out = run_dir / VAE_DIR
    rows = data.kept_rows(run_dir)
    if not rows:
        raise ValueError(f"{run_dir}: no episodes collected yet; run `dreamgym collect` first")
    folder = run_dir / data.EPISODES_DIR
    z_dim = config.z_dim or spec.z_dim
    vae_cfg = VAEConfig(z_dim=z_dim, kl_tolerance=config.kl_tolerance)
    vae = ConvVAE(vae_cfg).to(config.device)
    opt = torch.optim.Adam(vae.parameters(), lr=config.lr)
    ckpt_path = checkpoint_path(out, "fit-vae")
    step, epoch, batch_in_epoch = 0, 0, 0
    if ckpt_path.exists():
        tensors, values = load_checkpoint(ckpt_path)
        check_resume(out, values["config"], vae_cfg.to_dict())  # nothing is written yet
        provenance.check(out, "fit-vae", {}, rows)
        vae.load_state_dict(module_state("model", tensors))
        opt.load_state_dict(optimizer_state(tensors, values))
        for group in opt.param_groups:  # the learning rate asked for now
            group["lr"] = config.lr
        step, epoch, batch_in_epoch = values["step"], values["epoch"], values["batch_in_epoch"]
    frames_total = sum(r["frames"] for r in rows)
    total_steps = int(config.epochs * frames_total / config.batch_size)
    problems = data.verify(run_dir) if step < total_steps else []
    if problems:  # named before anything is written; reads check each shard again
        raise data.ShardError(f"{problems[0]}; {data.RECOLLECT}")
    out.mkdir(exist_ok=True)
    save_config(out / "config.json", config)
    search.repair_metrics(out / "metrics.jsonl", "step", step)
    if step >= total_steps:
        if provenance.recorded(out) is None:
            provenance.record(out, provenance.shards_identity(rows))
        return out
    provenance.record(out, provenance.shards_identity(rows))

    def checkpoint():
        check_weights(vae, "fit-vae", step, ckpt_path)
        optim, groups = optimizer_tensors(opt.state_dict())
        values = {"config": vae_cfg.to_dict(), "game": game, "step": step, "epoch": epoch,
                  "batch_in_epoch": batch_in_epoch, **groups}  # fmt: skip
        save_checkpoint(ckpt_path, module_tensors("model", vae.state_dict()) | optim, values)

    bar = tqdm(total=total_steps, initial=step, desc=f"fit-vae {game}", unit="step")
    gen = torch.Generator(device=config.device).manual_seed(config.seed * 1000 + step)
    t0, steps0 = time.time(), step
    vae.train()
    while step < total_steps:
        buffers, counts = _epoch_plan(rows, config, epoch)
        done = 0
        for buf, n_batches in zip(buffers, counts, strict=True):
            if step >= total_steps:
                break
            if done + n_batches <= batch_in_epoch:  # already trained on: skip without reading
                done += n_batches
                continue
            frames = np.concatenate(
                [
                    data.read_episode(folder / rows[j]["file"], ("frames",), rows[j]["sha256"])[
                        "frames"
                    ]
                    for j in buf
                ]
            )
            rng = np.random.default_rng([config.seed, epoch, int(buf[0])])
            perm = rng.permutation(len(frames))
            for b in range(n_batches):
                if done + b < batch_in_epoch:
                    continue
                if step >= total_steps:
                    break
                idx = perm[b * config.batch_size : (b + 1) * config.batch_size]
                x = frames_to_tensor(frames[idx], config.device)
                x_hat, mu, logvar = vae(x, gen)
                loss, rec, kl = vae_loss(x, x_hat, mu, logvar, config.kl_tolerance)
                check_finite(loss, "fit-vae", step, ckpt_path)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
                batch_in_epoch = done + b + 1
                if step % 20 == 0 or step == total_steps:
                    fps = (step - steps0) * config.batch_size / (time.time() - t0)
                    row = {"loss": loss.item(), "rec": rec.item(), "kl": kl.item()}
                    log_metrics(
                        out / "metrics.jsonl",
                        step=step,
                        epoch=epoch,
                        frames_per_s=round(fps, 1),
                        **row,
                    )
                    bar.set_postfix(
                        loss=f"{loss.item():.1f}", kl=f"{kl.item():.1f}", fps=f"{fps:.0f}"
                    )
                bar.update(1)
                if step % config.checkpoint_every == 0:
                    checkpoint()
            done += n_batches
        else:
            epoch, batch_in_epoch = epoch + 1, 0
    checkpoint()
    bar.close()
    return out


def load_trained_vae(run_dir: Path, device="cpu") -> ConvVAE:
    """V from a run directory's last checkpoint, rebuilt from the config it records."""
    tensors, values = load_checkpoint(checkpoint_path(Path(run_dir) / VAE_DIR, "fit-vae"))
    vae = ConvVAE(VAEConfig(**values["config"]))
    vae.load_state_dict(module_state("model", tensors))
    return vae.to(device).eval()
