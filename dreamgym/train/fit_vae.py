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
from dreamgym._io import METRICS_FILE, log_metrics
from dreamgym.games import get_game
from dreamgym.train import provenance, search
from dreamgym.train.common import (
    CHECKPOINT,
    VAE_DIR,
    check_finite,
    check_options,
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
from dreamgym.vae import ConvVAE, VAEConfig, danger_weight, frames_to_tensor, vae_loss

VAE_KEYS = ("z_dim", "kl_tolerance")
"""The settings of V's net a resume must keep (its checkpoint records them)."""


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
    danger_weight: float = 0.0
    """Extra weight of the pixels that show danger (the game's ``danger_pixels``: Doom's
    fireballs, and a pixel around them) in V's squared error: each counts ``1 +
    danger_weight`` times. 0: the paper's loss. A V trained a fraction of an epoch keeps
    the near fireballs and loses the far ones, and a dream without them is easier than
    the game."""
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
        at_least_zero=("kl_tolerance", "danger_weight"),
    )  # fmt: skip


def _batches(rows: list[dict], folder: Path, cfg: FitVAEConfig, epoch: int, batch_in_epoch: int):
    """The frame batches from ``(epoch, batch_in_epoch)`` on, each as ``(epoch, batch in
    epoch after it, frames)``; buffers already trained on are not read."""
    while True:
        buffers, counts = _epoch_plan(rows, cfg, epoch)
        if not any(counts):
            raise ValueError(
                f"--batch-size {cfg.batch_size}: more frames than {cfg.buffer_episodes} "
                "episodes hold; lower it or raise --buffer-episodes"
            )
        done = 0
        for buf, n_batches in zip(buffers, counts, strict=True):
            if done + n_batches > batch_in_epoch:
                episodes = [data.read_episode(folder / rows[j]["file"], ("frames",),
                                              rows[j]["sha256"]) for j in buf]  # fmt: skip
                frames = np.concatenate([e["frames"] for e in episodes])
                rng = np.random.default_rng([cfg.seed, epoch, int(buf[0])])
                perm = rng.permutation(len(frames))
                for b in range(max(batch_in_epoch - done, 0), n_batches):
                    batch = perm[b * cfg.batch_size : (b + 1) * cfg.batch_size]
                    yield epoch, done + b + 1, frames[batch]
            done += n_batches
        epoch, batch_in_epoch = epoch + 1, 0


class _Trainer:
    """V, its optimizer and its place in the data: what a checkpoint holds."""

    def __init__(self, vae_cfg: VAEConfig, config: FitVAEConfig, out: Path, game: str):
        self.vae_cfg, self.config, self.out, self.game = vae_cfg, config, out, game
        self.danger_pixels = get_game(game).danger_pixels if config.danger_weight else None
        self.ckpt_path = checkpoint_path(out, "fit-vae")
        self.vae = ConvVAE(vae_cfg).to(config.device)
        self.opt = torch.optim.Adam(self.vae.parameters(), lr=config.lr)
        self.step = self.epoch = self.batch_in_epoch = 0

    def resume(self, rows: list[dict]) -> None:
        """Continue from the checkpoint, if any (refused if V's shape or the episodes changed)."""
        found = search.resume(self.out, self.vae_cfg, VAE_KEYS, CHECKPOINT, "fit-vae", {}, rows)
        if found is None:
            return
        tensors, values = found
        self.vae.load_state_dict(module_state("model", tensors))
        self.opt.load_state_dict(optimizer_state(tensors, values))
        for group in self.opt.param_groups:  # the learning rate asked for now
            group["lr"] = self.config.lr
        self.step, self.epoch = values["step"], values["epoch"]
        self.batch_in_epoch = values["batch_in_epoch"]

    def checkpoint(self) -> None:
        check_weights(self.vae, "fit-vae", self.step, self.ckpt_path)
        optim, groups = optimizer_tensors(self.opt.state_dict())
        values = {"config": self.vae_cfg.to_dict(), "game": self.game, "step": self.step,
                  "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, **groups}  # fmt: skip
        tensors = module_tensors("model", self.vae.state_dict()) | optim
        save_checkpoint(self.ckpt_path, tensors, values)

    def train(self, batches, total_steps: int) -> None:
        """Optimizer steps on ``batches`` up to ``total_steps``, logged and checkpointed."""
        cfg = self.config
        bar = tqdm(total=total_steps, initial=self.step, desc=f"fit-vae {self.game}", unit="step")
        gen = torch.Generator(device=cfg.device).manual_seed(cfg.seed * 1000 + self.step)
        t0, steps0 = time.time(), self.step
        self.vae.train()
        for epoch, batch_in_epoch, frames in batches:
            x = frames_to_tensor(frames, cfg.device)
            x_hat, mu, logvar = self.vae(x, gen)
            weight = None
            if self.danger_pixels is not None:
                weight = danger_weight(frames, self.danger_pixels, cfg.danger_weight, cfg.device)
            loss, rec, kl = vae_loss(x, x_hat, mu, logvar, cfg.kl_tolerance, weight)
            check_finite(loss, "fit-vae", self.step, self.ckpt_path)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            self.step, self.epoch, self.batch_in_epoch = self.step + 1, epoch, batch_in_epoch
            bar.update(1)
            if self.step % 20 == 0 or self.step == total_steps:
                fps = (self.step - steps0) * cfg.batch_size / (time.time() - t0)
                log_metrics(self.out / METRICS_FILE, step=self.step, epoch=epoch,
                            frames_per_s=round(fps, 1), loss=loss.item(), rec=rec.item(),
                            kl=kl.item())  # fmt: skip
                bar.set_postfix(loss=f"{loss.item():.1f}", kl=f"{kl.item():.1f}", fps=f"{fps:.0f}")
            if self.step % cfg.checkpoint_every == 0:
                self.checkpoint()
            if self.step >= total_steps:
                break
        self.checkpoint()
        bar.close()


def run(config: FitVAEConfig, run_dir) -> Path:
    """Train V on the run's episodes (a rerun resumes); return ``run_dir/vae``."""
    _check(config)
    run_dir, game = open_run(run_dir)
    if config.danger_weight and get_game(game).danger_pixels is None:
        raise ValueError(
            f"--danger-weight {config.danger_weight}: {game} has no danger_pixels "
            "(GameSpec.danger_pixels); leave it at 0"
        )
    set_threads(config.threads)
    rows = data.kept_rows(run_dir)
    if not rows:
        raise ValueError(f"{run_dir}: no episodes collected yet; run `dreamgym collect` first")
    out = run_dir / VAE_DIR
    z_dim = config.z_dim or get_game(game).z_dim
    trainer = _Trainer(VAEConfig(z_dim=z_dim, kl_tolerance=config.kl_tolerance), config, out, game)
    trainer.resume(rows)  # nothing is written before this
    total_steps = int(config.epochs * sum(r["frames"] for r in rows) / config.batch_size)
    problems = data.verify(run_dir) if trainer.step < total_steps else []
    if problems:  # named before anything is written; reads check each shard again
        raise data.ShardError(f"{problems[0]}; {data.RECOLLECT}")
    out.mkdir(exist_ok=True)
    save_config(out / "config.json", config)
    search.repair_metrics(out / METRICS_FILE, "step", trainer.step)
    if trainer.step < total_steps or provenance.recorded(out) is None:
        provenance.record(out, provenance.shards_identity(rows))
    if trainer.step < total_steps:
        batches = _batches(rows, run_dir / data.EPISODES_DIR, config, trainer.epoch,
                           trainer.batch_in_epoch)  # fmt: skip
        trainer.train(batches, total_steps)
    return out


def load_trained_vae(run_dir: Path, device="cpu") -> ConvVAE:
    """V from a run directory's last checkpoint, rebuilt from the config it records."""
    tensors, values = load_checkpoint(checkpoint_path(Path(run_dir) / VAE_DIR, "fit-vae"))
    vae = ConvVAE(VAEConfig(**values["config"]))
    vae.load_state_dict(module_state("model", tensors))
    return vae.to(device).eval()
