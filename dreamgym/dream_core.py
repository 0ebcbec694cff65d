"""The dream's math: batched reset and step of M, shared by the envs and by CMA-ES.

Pure tensor functions over a ``WorldModel``; no Python loop over dreams.
Semantics (Ha & Schmidhuber 2018):
- reset: z0 = mu + sigma * eps of a random real first frame from the bank; h0 = c0 = 0;
- step(a): M consumes (z_t, executed a_t); z_{t+1} is sampled at temperature tau
  (logits / tau, sigma * sqrt(tau)); done when sigmoid(done_logit) > 0.5 (tau not
  applied), and with a ``hazard`` > 0 also with probability hazard x M's calibrated
  chance of dying; reward is the game's constant, or M's reward head.
- observation: [z, c, h] (Doom) or [z, h] (CarRacing), z clamped to +-Z_BOUND.

Honest dreams (see ``vary``): each dream may draw, when it starts, its own dropout
mask on what M's heads read and, with an ensemble, the member of the ensemble that
plays it; the controller always reads member 0's state, as in the real game.
"""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple

import torch

from dreamgym.mdnrnn import (
    DONE_POS_WEIGHT,
    LSTMState,
    MDNRNNOutput,
    Mixture,
    dropout_mask,
    sample,
)
from dreamgym.starts import RealStarts
from dreamgym.world_model import WorldModel

Z_BOUND = 10.0
"""Latents are clamped to [-Z_BOUND, Z_BOUND] (VAE latents live well inside it)."""


MEMBERS = ("sample",)
"""How dreams pick their member of an ensemble besides a fixed index: ``"sample"``
draws one per dream at reset."""


class DreamState(NamedTuple):
    """The state of a batch of dreams: the current z (N, Z) and M's LSTM state."""

    z: torch.Tensor  # (N, Z)
    lstm: LSTMState  # h, c: (N, H) of the M that plays each dream
    mask: torch.Tensor | None = None  # (N, H) dropout mask of each dream, None: no dropout
    member: torch.Tensor | None = None  # (N,) int64 member playing each dream (ensembles)
    reader: LSTMState | None = None  # (N, H) member 0's state, which the controller reads


def posterior_sample(
    mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """z drawn from V's posterior N(mu, exp(logvar)), clamped to +-Z_BOUND. (N, Z) -> (N, Z)."""
    eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
    return (mu + torch.exp(0.5 * logvar) * eps).clamp_(-Z_BOUND, Z_BOUND)


@torch.no_grad()
def initial_state(
    wm: WorldModel,
    n: int,
    generator: torch.Generator,
    dropout: float | None = None,
    members: str | int = "sample",
) -> DreamState:
    """n fresh dreams: z0 from random real first frames, zero recurrent state, and each
    dream's dropout mask and member (``vary``)."""
    return vary(wm, first_frames(wm, n, generator), generator, dropout, members)


@torch.no_grad()
def first_frames(wm: WorldModel, n: int, generator: torch.Generator) -> DreamState:
    """n dreams at random real first frames with zero recurrent state, nothing drawn
    for dropout or members yet (``vary`` does that)."""
    dev = wm.device
    idx = torch.randint(0, wm.z0_mu.shape[0], (n,), generator=generator, device=dev)
    z = posterior_sample(wm.z0_mu[idx], wm.z0_logvar[idx], generator)
    return DreamState(z, wm.mdnrnn.initial_state(n, device=dev))


@torch.no_grad()
def from_bank(
    wm: WorldModel,
    bank: RealStarts,
    n: int,
    generator: torch.Generator,
    dropout: float | None = None,
    members: str | int = "sample",
) -> DreamState:
    """n fresh dreams from random rows of a bank of real states, z drawn from V's
    posterior, with their dropout masks and members (``vary``). A dream that member k
    of an ensemble plays starts from k's state at its row; the controller reads member
    0's (``check_bank``)."""
    check_bank(wm, bank, members)
    idx = torch.randint(0, len(bank), (n,), generator=generator, device=bank.mu.device)
    rows = bank._map(lambda t: t[idx])
    z = posterior_sample(rows.mu, rows.logvar, generator)
    state = vary(wm, DreamState(z, rows.lstm), generator, dropout, members)
    if state.member is None or not rows.ensemble:
        return state
    h, c = rows.lstm.h.clone(), rows.lstm.c.clone()
    for k, other in enumerate(rows.ensemble, 1):
        pick = state.member == k
        h[pick], c[pick] = other.h[pick], other.c[pick]
    return state._replace(lstm=LSTMState(h, c))


def check_bank(wm: WorldModel, bank: RealStarts, members: str | int) -> None:
    """Refuse a bank that cannot start the dreams of ``wm``'s ensemble ``members`` plays:
    one that holds member 0's states only (banks of one M, and those written before
    ensembles had banks), unless every dream is member 0's."""
    k, held = len(wm.members), len(bank.members)
    if k == 1 or members == 0 or held == k:
        return
    holds = "member 0's states only" if held == 1 else f"the states of {held} Ms, not {k}"
    raise ValueError(
        f"starts='real' with an ensemble of {k} Ms: the bank holds {holds}; build it with "
        "every member (RealStarts.from_latents(wm.members, ...), what assemble does) or use "
        "members=0"
    )


def check_members(wm: WorldModel, members: str | int) -> str | int:
    """``members`` checked against ``wm``: "sample" or a member index."""
    k = len(wm.members)
    if isinstance(members, str) and members in MEMBERS:
        return members
    if isinstance(members, bool) or not isinstance(members, int) or not 0 <= members < k:
        raise ValueError(
            f"members: expected one of {MEMBERS} or an int in [0, {k}), got {members!r}"
        )
    return members


def check_dropout(dropout: float | None) -> float | None:
    """``dropout`` checked: None (the world model's rate) or a number in [0, 1)."""
    if dropout is None:
        return None
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ValueError(f"dropout: expected None or a number in [0, 1), got {dropout!r}")
    return float(dropout)


def check_hazard(hazard: float) -> float:
    """``hazard`` as a float, or a TypeError/ValueError that says what it must be: a finite
    number >= 0 (0: dreams end only where M is sure, as in the paper)."""
    if isinstance(hazard, bool) or not isinstance(hazard, numbers.Real):
        raise TypeError(f"hazard: expected a finite number >= 0, got {type(hazard).__name__}")
    try:
        value = float(hazard)
    except OverflowError:  # an int too large for a float
        value = math.inf
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"hazard: expected a finite number >= 0, got {hazard!r}")
    return value


def vary(
    wm: WorldModel,
    state: DreamState,
    generator: torch.Generator,
    dropout: float | None = None,
    members: str | int = "sample",
) -> DreamState:
    """Fresh dreams ``state`` with their dropout masks and members drawn from ``generator``.

    ``dropout``: the rate (None: the one M was trained with; 0: none). ``members``:
    ``"sample"`` draws each dream's member uniformly, an int fixes it. A world model
    of one M without dropout draws nothing, so its dreams are what they always were.
    """
    n, H = state.lstm.h.shape
    p = wm.dropout if dropout is None else dropout
    mask = dropout_mask(n, H, p, generator, state.z.device)
    member = reader = None
    if len(wm.members) > 1:
        if members == "sample":
            member = torch.randint(
                0, len(wm.members), (n,), generator=generator, device=state.z.device
            )
        else:
            member = torch.full((n,), int(members), dtype=torch.int64, device=state.z.device)
        reader = LSTMState(state.lstm.h.clone(), state.lstm.c.clone())
    return DreamState(state.z, state.lstm, mask, member, reader)


def _predict(wm: WorldModel, state: DreamState, executed: torch.Tensor):
    """Each dream's member steps its own rows: the new states and predictions, (N, ...)."""
    if state.member is None:
        return wm.mdnrnn.step(state.lstm, state.z, executed, state.mask)
    n = state.z.shape[0]
    parts = []
    for k, m in enumerate(wm.members):
        idx = (state.member == k).nonzero().squeeze(1)
        if idx.numel():
            sub = select(DreamState(state.z, state.lstm, state.mask), idx)
            parts.append((idx, m.step(sub.lstm, sub.z, executed[idx], sub.mask)))

    def gather(pick):  # one field of every member's rows, back in row order
        first = pick(parts[0][1])
        if first is None:
            return None
        out = first.new_empty((n, *first.shape[1:]))
        for idx, res in parts:
            out.index_copy_(0, idx, pick(res))
        return out

    lstm = LSTMState(gather(lambda r: r[0].h), gather(lambda r: r[0].c))
    mix = Mixture(*(gather(lambda r, i=i: r[1].mixture[i]) for i in range(3)))
    out = MDNRNNOutput(mix, gather(lambda r: r[1].done_logit), gather(lambda r: r[1].reward))
    return lstm, out


@torch.no_grad()
def step(
    wm: WorldModel,
    state: DreamState,
    action: torch.Tensor,
    tau: float,
    generator: torch.Generator,
    hazard: float = 0.0,
) -> tuple[DreamState, torch.Tensor, torch.Tensor]:
    """Advance n dreams one step. action (N, A) in the game's action space.

    A dream ends where M's done head says p > 0.5, as in the paper. With ``hazard`` > 0
    it also ends with probability hazard x sigmoid(done_logit - log(DONE_POS_WEIGHT)),
    M's chance of dying with the fit's weight on deaths undone: a dream that takes the
    near misses M foresees as the game would (0 draws nothing, so dreams stay the same).
    Returns (next state, reward (N,), terminated (N,) bool).
    """
    executed = wm.game.executed_action(action).to(state.z.dtype)
    lstm, out = _predict(wm, state, executed)
    reader = None if state.reader is None else wm.mdnrnn.cell(state.reader, state.z, executed)
    z = sample(out.mixture, tau, generator).clamp_(-Z_BOUND, Z_BOUND)
    terminated = out.done_logit > 0  # sigmoid(logit) > 0.5
    if hazard > 0:
        chance = torch.sigmoid(out.done_logit - math.log(DONE_POS_WEIGHT)) * hazard
        draw = torch.rand(chance.shape, generator=generator, device=chance.device)
        terminated = terminated | (draw < chance)
    if wm.game.constant_reward is not None:
        reward = torch.full_like(out.done_logit, wm.game.constant_reward)
    else:
        reward = out.reward
    return DreamState(z, lstm, state.mask, state.member, reader), reward, terminated


@torch.no_grad()
def follow(wm: WorldModel, lstm: LSTMState, z: torch.Tensor, action: torch.Tensor) -> LSTMState:
    """M's recurrent state after it reads (z, action), without predicting anything.

    This is how the controller's M runs in the real game, where V's z, not M's, comes
    next (``make_real``); it runs the same way beside another world model's dream
    (``evolve``'s ensemble).
    """
    return wm.mdnrnn.cell(lstm, z, wm.game.executed_action(action).to(z.dtype))


def observation(wm: WorldModel, state: DreamState) -> torch.Tensor:
    """The controller's input: (N, Z + H) = [z, h], or (N, Z + 2H) = [z, c, h] for Doom,
    with member 0's h and c in an ensemble's dreams."""
    lstm = state.lstm if state.reader is None else state.reader
    if wm.game.controller_reads_cell:
        return torch.cat([state.z, lstm.c, lstm.h], dim=-1)
    return torch.cat([state.z, lstm.h], dim=-1)


def select(state: DreamState, index: torch.Tensor) -> DreamState:
    """The rows ``index`` of a batch of dreams (to drop finished ones, or reset some)."""
    return _map(lambda t: t[index], state)


def where(mask: torch.Tensor, new: DreamState, old: DreamState) -> DreamState:
    """Rows from ``new`` where mask (N,) is True, else from ``old``."""

    def pick(a, b):
        m = mask if a.ndim == 1 else mask.unsqueeze(-1)
        return torch.where(m, a, b)

    return _map(pick, new, old)


def _map(f, *states: DreamState) -> DreamState:
    """``f`` applied to each tensor of the states, field by field (None stays None)."""

    def each(*ts):
        return None if ts[0] is None else f(*ts)

    def lstm(*ls):
        return (
            None if ls[0] is None else LSTMState(each(*(x.h for x in ls)), each(*(x.c for x in ls)))
        )

    return DreamState(
        each(*(s.z for s in states)),
        lstm(*(s.lstm for s in states)),
        each(*(s.mask for s in states)),
        each(*(s.member for s in states)),
        lstm(*(s.reader for s in states)),
    )
