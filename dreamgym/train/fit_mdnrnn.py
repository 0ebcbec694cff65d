"""Stage 4: train M on V's latents: next-z mixture, done head, reward head where needed.

Sequences never cross an episode boundary (shorter ones are padded and masked);
z is re-sampled from (mu, logvar) for every batch, so M learns V's posterior
noise rather than its means. Checkpoints atomically; a rerun resumes.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from dreamgym._io import METRICS_FILE, log_metrics
from dreamgym.games import get_game
from dreamgym.mdnrnn import (
    DONE_POS_WEIGHT,
    MDNRNN,
    LSTMState,
    MDNRNNConfig,
    MDNRNNOutput,
    Mixture,
    done_loss,
    dropout_mask,
    mdn_nll,
    mixture_log_prob,
)
from dreamgym.train import provenance, search
from dreamgym.train.common import (
    CHECKPOINT,
    LATENTS,
    MDN_DIR,
    check_finite,
    check_options,
    check_weights,
    checkpoint_path,
    load_checkpoint,
    member_dir,
    module_state,
    module_tensors,
    open_run,
    optimizer_state,
    optimizer_tensors,
    save_checkpoint,
    save_config,
    set_threads,
    world_model_dest,
)
from dreamgym.train.encode import load_latents
from dreamgym.world_model import WorldModel, vae_digest


@dataclass
class FitMDNRNNConfig:
    """Settings of the ``fit-mdnrnn`` stage: M on the run's encoded episodes."""

    hidden: int | None = None
    """LSTM units (None: the game's)."""
    n_mix: int = 5
    """Gaussians in the mixture of each latent dimension (the paper: 5)."""
    dropout: float = 0.0
    """Dropout rate on what M's heads read, one mask per training sequence; the world
    model records it and every dream draws its own mask at reset (0: none; Dropout's
    Dream Land found 0.1 best for Doom)."""
    members: int = 1
    """Ms to train, one after another, each on its own draws of sequences: an ensemble
    that shares V. Each dream is played by one member, so an exploit of one M's errors
    earns nothing in the others. Member 0 is ``mdnrnn/``, member k ``mdnrnn/member<k>/``;
    a rerun with more members trains only the new ones."""
    steps: int = 2000
    """Optimizer steps."""
    batch_size: int = 64
    """Sequences per optimizer step."""
    seq_len: int = 500
    """Longest training sequence; longer episodes contribute windows of this length."""
    lr: float = 1e-3
    """Adam's learning rate at the first step."""
    lr_final: float = 1e-5
    """The learning rate decays exponentially from lr to lr_final over the steps."""
    grad_clip: float = 1.0
    """Gradients are clipped to this global norm."""
    done_pos_weight: float = DONE_POS_WEIGHT
    """Weight of a positive (episode-ending) step in the done head's cross-entropy."""
    reward_weight: float = 1.0
    """Weight of the reward head's squared error (games with a reward head)."""
    open_loop_steps: int = 0
    """Also train M on its own predictions over this many steps (0: off): from its
    teacher-forced state every ``open_loop_every`` steps, M reads the mean of its last
    prediction and the true actions, and is scored on the true next latents (and
    rewards). One-step prediction barely needs the action (one frame of steering
    hardly moves the picture); over many steps it decides where the road goes, as it
    does in the dream."""
    open_loop_every: int = 50
    """Steps between the starts of open-loop predictions in a training sequence."""
    open_loop_weight: float = 1.0
    """Weight of the open-loop losses against the one-step ones."""
    init: str | None = None
    """A world-model folder whose M (member 0) every member starts from, instead of random
    weights (a fresh start only: a checkpoint resumes). The paper's iteration can then
    refit M on new data without changing what a controller reads in h. Its V must be the
    one the latents were encoded with (``encode --world-model``), its M of this shape."""
    checkpoint_every: int = 100
    """Steps between atomic checkpoints."""
    seed: int = 0
    """Seed of the sequences drawn and their latent samples (not of the initial weights)."""
    device: str = "cpu"
    """Torch device (``cpu``, ``cuda``, ``cuda:1``)."""
    threads: int | None = None
    """Torch threads of this process (None: torch's default)."""


class SequenceSampler:
    """Random padded windows of whole or partial episodes, as tensors."""

    def __init__(self, lat: dict, executed_action, seq_len: int, seed: int):
        self.mu, self.logvar = lat["mu"], lat["logvar"]
        self.actions = np.asarray(executed_action(lat["actions"]), np.float32)
        self.rewards, self.terminated = lat["rewards"], lat["terminated"]
        self.starts, self.ends = lat["offsets"][:-1], lat["offsets"][1:]
        self.seq_len = seq_len
        self.rng = np.random.default_rng(seed)

    def batch(self, batch_size: int, device) -> dict[str, torch.Tensor]:
        eps = self.rng.integers(0, len(self.starts), batch_size)
        lengths = self.ends[eps] - self.starts[eps]
        # Half the windows start at the first frame (as dreams do), a quarter end at the
        # episode's last frame, a quarter lie anywhere. Without the windows that end at
        # the last frame, an episode longer than seq_len would almost never show M its
        # end, and M would learn that an episode which lasts never ends.
        last = np.maximum(lengths - self.seq_len, 0)  # the largest offset
        kind = self.rng.random(batch_size)
        anywhere = (self.rng.random(batch_size) * (last + 1)).astype(np.int64)
        off = np.where(kind < 0.5, 0, np.where(kind < 0.75, last, anywhere))
        n = np.minimum(lengths - off, self.seq_len)  # (B,) valid steps
        T = int(n.max())
        t = np.arange(T)
        idx = self.starts[eps, None] + off[:, None] + np.minimum(t[None], n[:, None] - 1)  # (B, T)
        valid = t[None] < n[:, None]
        # The next frame exists inside the window or right after it (same episode).
        has_next = (idx + 1 < self.ends[eps, None]) & valid
        nxt = np.minimum(idx + 1, self.ends[eps, None] - 1)
        mu, logvar = self.mu[idx], self.logvar[idx]
        z = mu + np.exp(0.5 * logvar) * self.rng.standard_normal(mu.shape).astype(np.float32)
        mu_n, lv_n = self.mu[nxt], self.logvar[nxt]
        z_next = mu_n + np.exp(0.5 * lv_n) * self.rng.standard_normal(mu_n.shape).astype(np.float32)

        def tt(x, dtype=torch.float32):
            return torch.as_tensor(x, dtype=dtype, device=device)

        return {
            "z": tt(z), "a": tt(self.actions[idx]), "z_next": tt(z_next),
            "done": tt(self.terminated[idx]), "reward": tt(self.rewards[idx]),
            "valid": tt(valid, torch.bool), "has_next": tt(has_next, torch.bool),
        }  # fmt: skip


def forward_with_states(
    m: MDNRNN, z: torch.Tensor, a: torch.Tensor, every: int, mask: torch.Tensor | None = None
) -> tuple[MDNRNNOutput, list[tuple[int, LSTMState]]]:
    """Teacher-forced outputs, and M's state before every ``every``-th step (t, state):
    M's sequence forward, run ``every`` steps at a time."""
    state = m.initial_state(z.shape[0], z.device, z.dtype)
    outs, states = [], []
    for t in range(0, z.shape[1], every):
        states.append((t, state))
        out, state = m(z[:, t : t + every], a[:, t : t + every], state, mask)
        outs.append(out)

    def cat(parts):  # time is dim 1 of every field
        return None if parts[0] is None else torch.cat(parts, dim=1)

    mixture = Mixture(*(cat(list(f)) for f in zip(*(o.mixture for o in outs), strict=True)))
    return MDNRNNOutput(
        mixture, cat([o.done_logit for o in outs]), cat([o.reward for o in outs])
    ), states


def mixture_mean(mixture: Mixture) -> torch.Tensor:
    """The mean of each latent dimension's mixture: (..., Z)."""
    return (torch.softmax(mixture.logit_pi, dim=-1) * mixture.mu).sum(-1)


def open_loop_losses(
    m: MDNRNN,
    b: dict,
    states: list[tuple[int, LSTMState]],
    steps: int,
    mask: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """NLL of the true next latents (and reward error) while M reads its own predictions.

    From each state in ``states`` M reads the true latent once, then for ``steps - 1``
    more steps the mean of its previous prediction, with the true actions. Only those
    later steps count: the first is the one-step loss again.
    """
    B, T = b["z"].shape[:2]
    t0 = torch.tensor([t for t, _ in states], device=b["z"].device).repeat_interleave(B)
    rows = torch.arange(B, device=b["z"].device).repeat(len(states))
    state = LSTMState(torch.cat([s.h for _, s in states]), torch.cat([s.c for _, s in states]))
    z_in = b["z"][rows, t0]
    mask = None if mask is None else mask[rows]
    nll, n_nll, sq, n_sq = 0.0, 0, 0.0, 0
    for j in range(steps):
        t = t0 + j
        tc = t.clamp(max=T - 1)
        state, out = m.step(state, z_in, b["a"][rows, tc], mask)
        if j:
            has_next = (b["has_next"][rows, tc] & (t < T)).float()
            lp = mixture_log_prob(out.mixture, b["z_next"][rows, tc]).sum(-1)
            nll, n_nll = nll - (lp * has_next).sum(), n_nll + has_next.sum()
            if out.reward is not None:
                valid = (b["valid"][rows, tc] & (t < T)).float()
                sq = sq + ((out.reward - b["reward"][rows, tc]).pow(2) * valid).sum()
                n_sq = n_sq + valid.sum()
        z_in = mixture_mean(out.mixture)
    Z = b["z"].shape[-1]
    parts = {"open_loop_nll": nll / (n_nll * Z).clamp(min=1)}
    if m.config.reward_head:
        parts["open_loop_reward"] = sq / n_sq.clamp(min=1)
    return parts


def losses(
    m: MDNRNN, b: dict, cfg: FitMDNRNNConfig, generator: torch.Generator | None = None
) -> dict[str, torch.Tensor]:
    """M's loss terms for a batch: latent NLL, done BCE, and the reward and open-loop
    terms when enabled; ``loss`` is their weighted sum. With dropout, one mask per
    sequence, drawn from ``generator``."""
    B = b["z"].shape[0]
    mask = dropout_mask(B, m.config.hidden, m.config.dropout, generator, b["z"].device)
    if cfg.open_loop_steps:
        out, states = forward_with_states(m, b["z"], b["a"], cfg.open_loop_every, mask)
    else:
        out, _ = m(b["z"], b["a"], mask=mask)
    parts = {
        "nll": mdn_nll(out.mixture, b["z_next"], b["has_next"]),
        "done": done_loss(out.done_logit, b["done"], cfg.done_pos_weight, b["valid"]),
    }
    if out.reward is not None:
        v = b["valid"].float()
        parts["reward"] = ((out.reward - b["reward"]).pow(2) * v).sum() / v.sum()
    total = parts["nll"] + parts["done"] + cfg.reward_weight * parts.get("reward", 0.0)
    if cfg.open_loop_steps:
        parts.update(open_loop_losses(m, b, states, cfg.open_loop_steps, mask))
        total = total + cfg.open_loop_weight * (
            parts["open_loop_nll"] + cfg.reward_weight * parts.get("open_loop_reward", 0.0)
        )
    return {"loss": total, **parts}


def run(config: FitMDNRNNConfig, run_dir) -> Path:
    """Train M (every member of an ensemble) on the run's latents; return ``run_dir/mdnrnn``."""
    if config.open_loop_steps == 1 or config.open_loop_steps < 0 or config.open_loop_every < 1:
        raise ValueError(
            f"open_loop_steps must be 0 (off) or >= 2 and open_loop_every >= 1, got "
            f"{config.open_loop_steps} and {config.open_loop_every}"
        )
    check_options(
        config,
        positive=("hidden", "n_mix", "batch_size", "seq_len", "lr", "lr_final", "grad_clip",
                  "checkpoint_every", "threads", "members"),
        at_least_zero=("steps", "done_pos_weight", "reward_weight", "open_loop_weight"),
    )  # fmt: skip
    if not 0 <= config.dropout < 1:
        raise ValueError(f"dropout: expected a number in [0, 1), got {config.dropout}")
    run_dir, game = open_run(run_dir)
    world_model_dest(run_dir)  # fail now, not after training, if assembling could not write
    set_threads(config.threads)
    spec = get_game(game)
    lat = load_latents(run_dir)
    vae_id, rows = provenance.latents_inputs(run_dir / LATENTS)
    mcfg = MDNRNNConfig(
        z_dim=lat["mu"].shape[1], action_dim=spec.action_dim, hidden=config.hidden or spec.hidden,
        n_mix=config.n_mix, reward_head=spec.models_reward, dropout=config.dropout,
    )  # fmt: skip
    init = _init_weights(config.init, mcfg, spec.name, vae_id) if config.init else None
    for k in range(config.members):
        _fit_member(config, run_dir, k, mcfg, lat, spec, vae_id, rows, init)
    return run_dir / MDN_DIR


def _init_weights(folder: str, mcfg: MDNRNNConfig, game: str, vae_id: str | None) -> dict:
    """The weights of ``folder``'s M (member 0), if it fits this run's latents and M's shape."""
    wm = WorldModel.load(folder, game)
    if vae_id != vae_digest(folder):
        raise ValueError(
            f"init: {folder} has another V than the one the run's latents were encoded with; "
            f"encode with --world-model {folder} first"
        )
    theirs = dataclasses.replace(wm.mdnrnn.config, dropout=mcfg.dropout)
    if theirs != mcfg:
        raise ValueError(
            f"init: {folder}'s M is {theirs.to_dict()}, this fit asks for {mcfg.to_dict()}"
        )
    return wm.mdnrnn.state_dict()


class _Member:
    """Member k of the ensemble, its optimizer, schedule and step: what a checkpoint holds."""

    def __init__(self, config: FitMDNRNNConfig, run_dir: Path, k: int, mcfg: MDNRNNConfig, game):
        self.config, self.k, self.mcfg, self.game = config, k, mcfg, game
        self.out = member_dir(run_dir, k)
        self.ckpt_path = checkpoint_path(self.out, "fit-mdnrnn")
        self.m = MDNRNN(mcfg).to(config.device)
        self.opt = torch.optim.Adam(self.m.parameters(), lr=config.lr)
        decay = math.log(config.lr_final / config.lr) / max(config.steps, 1)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: math.exp(decay * s))
        self.step = 0

    def resume(self, vae_id, rows) -> bool:
        """Continue from the checkpoint, if any (refused if M's shape, V or the latents changed);
        whether there was one."""
        inputs = {} if vae_id is None else {"vae": vae_id}
        keys = [f.name for f in fields(self.mcfg)]
        found = search.resume(self.out, self.mcfg, keys, CHECKPOINT, "fit-mdnrnn", inputs,
                              rows if vae_id is not None else None)  # fmt: skip
        if found is None:
            return False
        tensors, values = found
        self.m.load_state_dict(module_state("model", tensors))
        self.opt.load_state_dict(optimizer_state(tensors, values))
        self.sched.load_state_dict(values["scheduler"])
        self.sched.base_lrs = [self.config.lr]  # the learning rates asked for now
        self.step = values["step"]
        return True

    def checkpoint(self) -> None:
        check_weights(self.m, "fit-mdnrnn", self.step, self.ckpt_path)
        optim, groups = optimizer_tensors(self.opt.state_dict())
        values = {"config": self.mcfg.to_dict(), "game": self.game, "step": self.step,
                  "scheduler": self.sched.state_dict(), **groups}  # fmt: skip
        save_checkpoint(
            self.ckpt_path, module_tensors("model", self.m.state_dict()) | optim, values
        )

    def train(self, sampler: SequenceSampler, masks: torch.Generator) -> None:
        """Optimizer steps up to ``config.steps``, logged and checkpointed."""
        cfg, m = self.config, self.m
        desc = f"fit-mdnrnn {self.game}" + (f" member {self.k}" if self.k else "")
        bar = tqdm(total=cfg.steps, initial=self.step, desc=desc, unit="step")
        t0, step0 = time.time(), self.step
        m.train()
        while self.step < cfg.steps:
            parts = losses(m, sampler.batch(cfg.batch_size, cfg.device), cfg, masks)
            check_finite(parts["loss"], "fit-mdnrnn", self.step, self.ckpt_path)
            self.opt.zero_grad(set_to_none=True)
            parts["loss"].backward()
            torch.nn.utils.clip_grad_norm_(m.parameters(), cfg.grad_clip)
            self.opt.step()
            self.sched.step()
            self.step += 1
            if self.step % 10 == 0 or self.step == cfg.steps:
                rate = (self.step - step0) / (time.time() - t0)
                row = {name: round(v.item(), 5) for name, v in parts.items()}
                lr = self.sched.get_last_lr()[0]
                log_metrics(self.out / METRICS_FILE, step=self.step, lr=lr,
                            steps_per_s=round(rate, 3), **row)  # fmt: skip
                bar.set_postfix(**{name: f"{v:.3f}" for name, v in row.items()})
            bar.update(1)
            if self.step % cfg.checkpoint_every == 0:
                self.checkpoint()
        self.checkpoint()
        bar.close()


def _fit_member(config: FitMDNRNNConfig, run_dir: Path, k: int, mcfg: MDNRNNConfig, lat: dict,
                spec, vae_id, rows, init: dict | None) -> Path:  # fmt: skip
    """Train member k of the ensemble (resuming its checkpoint, else from ``init``'s
    weights, if any) to ``config.steps``."""
    member = _Member(config, run_dir, k, mcfg, spec.name)
    if not member.resume(vae_id, rows) and init is not None:
        member.m.load_state_dict(init)
    out, step = member.out, member.step
    out.mkdir(exist_ok=True)
    if k == 0:
        save_config(out / "config.json", config)
    search.repair_metrics(out / METRICS_FILE, "step", step)
    if vae_id is not None and (step < config.steps or provenance.recorded(out) is None):
        provenance.record(out, {"vae": vae_id, **provenance.shards_identity(rows)})
    if step < config.steps:
        seed = config.seed * 100003 + step + k * 7919  # each member its own sequences
        sampler = SequenceSampler(lat, spec.executed_action, config.seq_len, seed)
        member.train(sampler, torch.Generator(device=config.device).manual_seed(seed))
    return out


def load_trained_mdnrnn(run_dir: Path, device="cpu", member: int = 0) -> MDNRNN:
    """Member ``member`` of the run's trained Ms (0: the run's M, ``mdnrnn/``), in eval
    mode on ``device``."""
    tensors, values = load_checkpoint(checkpoint_path(member_dir(run_dir, member), "fit-mdnrnn"))
    m = MDNRNN(MDNRNNConfig(**values["config"]))
    m.load_state_dict(module_state("model", tensors))
    return m.to(device).eval()
