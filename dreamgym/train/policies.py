"""Collection policies: what drives the real game while data for V and M is gathered."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from dreamgym.games import GameSpec

if TYPE_CHECKING:
    from dreamgym.policy import ControllerPolicy


def doom_random_policy(
    rng: np.random.Generator, max_hold: int | None = None
) -> Callable[[np.ndarray], np.ndarray]:
    """A uniform action in [-1, 1] held for 1 to ``max_hold`` frames.

    ``max_hold=10`` is the paper's random policy. None (collection) draws it per
    episode: 10 in half the episodes, 50 in the other half. The long holds put
    wall-hugging and standing still for seconds into the data, so M learns that
    fireballs still kill there; with 1-10 frame holds alone, a dream trained on
    little data let "always move left" survive ten times longer than the real game.
    """
    if max_hold is None:
        max_hold = 10 if rng.random() < 0.5 else 50
    if max_hold < 1:
        raise ValueError(f"max_hold: expected an integer >= 1, got {max_hold}")
    state = {"left": 0, "a": np.zeros(1, np.float32)}

    def act(obs):
        if state["left"] == 0:
            state["a"] = rng.uniform(-1, 1, 1).astype(np.float32)
            state["left"] = int(rng.integers(1, max_hold + 1))
        state["left"] -= 1
        return state["a"].copy()

    return act


def car_track_policy(
    rng: np.random.Generator, fast: bool = False
) -> Callable[[np.ndarray], np.ndarray]:
    """A noisy track follower, so that V and M see varied driving that stays near the road.

    Pure random actions barely move the car, so the frames would be almost all the
    start line. This policy steers towards the grey road pixels ahead of the car
    (read from the 64x64 frame), with a per-episode gain, speed target and noise
    level, and occasional random swerves and brakes: V and M see on-track driving,
    turns at varied speed, recoveries and some grass.

    ``fast`` drives at 60-100% throttle and swerves three times as often, for 5-40
    steps: M must see what full throttle and hard steering do (spins, skids off the
    road, no new tiles), or a controller trained in the dream finds that full
    throttle with the wheel turned earns reward there and circles on the spot for real.
    """
    gain = rng.uniform(0.5, 3.0 if fast else 2.0)
    gas_level = rng.uniform(0.6, 1.0) if fast else rng.uniform(0.1, 0.6)
    noise = rng.uniform(0.05, 0.5)
    swerve_p, swerve_max = (0.03, 40) if fast else (0.01, 20)
    state = {"swerve": 0, "steer": 0.0, "brake": 0}
    cols = np.arange(64) - 31.5

    def act(obs):
        ahead = obs[30:44].astype(np.int16)  # rows in front of the car
        r, g, b = ahead[..., 0], ahead[..., 1], ahead[..., 2]
        road = (np.abs(r - g) < 12) & (np.abs(g - b) < 12) & (g > 80) & (g < 140)
        w = road.sum(0)
        target = (w * cols).sum() / w.sum() / 32 if w.sum() > 0 else 0.0
        steer = np.clip(gain * target + noise * rng.standard_normal(), -1, 1)
        if state["swerve"] > 0:
            state["swerve"] -= 1
            steer = state["steer"]
        elif rng.random() < swerve_p:
            state["swerve"] = int(rng.integers(5, swerve_max))
            state["steer"] = float(rng.uniform(-1, 1))
        brake = 0.0
        if state["brake"] > 0:
            state["brake"] -= 1
            brake = 0.8
        elif rng.random() < 0.005:
            state["brake"] = int(rng.integers(3, 10))
        gas = 0.0 if brake else float(np.clip(gas_level + 0.1 * rng.standard_normal(), 0, 1))
        return np.array([steer, gas, brake], np.float32)

    return act


def _pursuit(track: np.ndarray, hull, look: int) -> tuple[float, float]:
    """Pure pursuit on CarRacing's centre line ``track`` (rows: angle, x, y): the angle
    from the car's heading to the tile ``look`` tiles ahead of the nearest one, and how
    much the road bends over the next tiles (radians)."""
    px, py = hull.position
    i = int((((track[:, 1:] - (px, py)) ** 2).sum(1)).argmin())
    tx, ty = track[(i + look) % len(track), 1:]
    c, s = np.cos(hull.angle), np.sin(hull.angle)
    ahead = -(tx - px) * s + (ty - py) * c  # along the car's forward axis
    right = (tx - px) * c + (ty - py) * s
    bend = track[(i + 12) % len(track), 0] - track[(i + 2) % len(track), 0]
    return float(np.arctan2(right, ahead)), abs((bend + np.pi) % (2 * np.pi) - np.pi)


def car_drive_policy(
    env, rng: np.random.Generator, **settings
) -> Callable[[np.ndarray], np.ndarray]:
    """A driver that reads the game's state, so that M sees whole laps at speed.

    It steers towards the track's centre line a few tiles ahead of the car (pure
    pursuit on ``env.unwrapped.track``) and throttles or brakes towards a speed
    that falls with the curvature ahead and with the angle to the road (so it
    slows down to turn back after a spin). Each episode draws its own settings
    (lookahead, steering gain, top speed, throttle, steering noise, how often it
    swerves), so the data holds fast and slow laps, skids onto the grass and
    recoveries: the drives a controller trained in the dream must tell apart.
    ``settings`` fixes any of them by name; ``look=6, gain=1.5, vmax=200, gas=0.5,
    noise=0, swerve_p=0`` scored 873 ± 62 on four tracks (seeds 5000-5003); with
    drawn settings, 300 collection episodes scored 604 ± 183. The frames it leaves in
    the data are the game's pixels, as for any policy.

    ``explore`` (the collection policy) is the same driver taken off its line
    about a third of the time: swerves of 5-30 steps, several times as often, each
    with its own wheel, throttle and brake held, so M sees what an action does
    whatever the road shows, not only the action the road calls for.
    """
    game = env.unwrapped
    drawn = {
        "look": int(rng.integers(5, 9)),
        "gain": rng.uniform(1.0, 2.0),
        "vmax": rng.uniform(100, 210),
        "gas": rng.uniform(0.35, 0.6),
        "noise": rng.uniform(0.0, 0.1),
        "swerve_p": rng.uniform(0.0, 0.01),
        "swerve_max": 20,
        "swerve_pedals": False,
    }
    if unknown := set(settings) - set(drawn):
        raise ValueError(f"car_drive_policy: unknown settings {sorted(unknown)}")
    drawn.update(settings)
    look, gain, vmax = int(drawn["look"]), drawn["gain"], drawn["vmax"]
    gas_level, noise, swerve_p = drawn["gas"], drawn["noise"], drawn["swerve_p"]
    state = {"swerve": 0, "steer": 0.0, "pedals": None, "track": None, "id": None}

    def act(obs):
        if state["id"] != id(game.track):  # a new track after each reset
            state["id"] = id(game.track)
            state["track"] = np.array([t[1:4] for t in game.track])  # angle, x, y
        hull = game.car.hull
        error, bend = _pursuit(state["track"], hull, look)
        steer = np.clip(gain * error + noise * rng.standard_normal(), -1, 1)
        if state["swerve"] > 0:
            state["swerve"] -= 1
            steer = state["steer"]
            if state["pedals"] is not None:
                return np.array([steer, *state["pedals"]], np.float32)
        elif rng.random() < swerve_p:
            state["swerve"] = int(rng.integers(5, drawn["swerve_max"]))
            state["steer"] = float(rng.uniform(-1, 1))
            if drawn["swerve_pedals"]:  # any throttle, and a brake one swerve in five
                state["pedals"] = (float(rng.uniform(0, 1)), 0.8 * float(rng.random() < 0.2))
        target = vmax / (1 + 3 * bend) / (1 + 4 * abs(error))  # slow to turn back to the road
        speed = float(np.hypot(*hull.linearVelocity))
        gas = gas_level if speed < target else 0.0
        brake = 0.5 if speed > 1.3 * target else 0.0
        return np.array([steer, gas, brake], np.float32)

    return act


NOISE_SPACES = ("action", "output")
"""Where ``noisy_controller`` adds its noise."""


def check_noise_space(space: str) -> None:
    """Raise a clear error unless ``space`` is one of ``NOISE_SPACES``."""
    if space not in NOISE_SPACES:
        raise ValueError(f"noise_space: expected one of {NOISE_SPACES}, got {space!r}")


def noisy_controller(
    controller: ControllerPolicy,
    spec: GameSpec,
    rng: np.random.Generator,
    sigma: float,
    space: str = "action",
) -> Callable[[np.ndarray], np.ndarray]:
    """``controller``'s action plus Gaussian noise of standard deviation ``sigma`` (it reads
    the dream's latent observation).

    ``space="action"``: the noise is added to the action, then clipped to the action
    space. ``"output"``: it is added to the controller's tanh outputs, clipped to
    [-1, 1] and mapped to the action as the controller's are. A pedal the controller
    holds firmly released then stays released: with CarRacing's brake = clip(a, 0, 1),
    action noise presses the brake in about half the steps of a controller that
    never brakes.
    """
    check_noise_space(space)
    if spec.discrete:
        return _noisy_discrete(controller, spec, rng, sigma, space)
    low, high = spec.action_space.low, spec.action_space.high

    def act(obs):
        if space == "output":
            y = controller.outputs(obs)
            y = np.clip(y + sigma * rng.standard_normal(y.shape), -1, 1).astype(np.float32)
            return spec.controller_to_action(torch.from_numpy(y)).numpy()
        a = controller(obs) + sigma * rng.standard_normal(spec.action_dim)
        return np.clip(a, low, high).astype(np.float32)

    return act


def _noisy_discrete(controller, spec: GameSpec, rng: np.random.Generator, sigma: float, space):
    """``noisy_controller`` of a discrete game: ``action`` space plays a uniform random action
    with probability ``sigma`` (at most 1); ``output`` adds the noise to C's outputs before
    their argmax."""

    def act(obs):
        if space == "output":
            y = controller.outputs(obs)
            return int(np.argmax(y + sigma * rng.standard_normal(y.shape)))
        if rng.random() < sigma:
            return int(rng.integers(spec.discrete))
        return int(controller(obs))

    return act


def random_policy(spec: GameSpec, rng: np.random.Generator) -> Callable[[np.ndarray], Any]:
    """Uniform random actions of any game: an index in [0, n), or a point of the Box."""
    low, high = np.asarray(spec.action_low), np.asarray(spec.action_high)

    def act(obs):
        if spec.discrete:
            return int(rng.integers(spec.discrete))
        return rng.uniform(low, high).astype(np.float32)

    return act


COLLECT_POLICIES = {
    "doom_take_cover": ("random",),
    "car_racing": ("track", "fast_track", "drive", "explore"),
}
"""Collection policies per game; the first is the default. Any other game has ``random``
(``random_policy``)."""


def check_collect_policy(spec: GameSpec, name: str | None) -> None:
    """Raise a clear error unless ``name`` is None or one of ``spec``'s collection policies."""
    names = COLLECT_POLICIES.get(spec.name, ("random",))
    if name is not None and name not in names:
        raise ValueError(f"policy: {spec.name} has collection policies {names}, got {name!r}")


def make_collect_policy(
    spec: GameSpec, rng: np.random.Generator, name: str | None = None, env=None
):
    """The collection policy ``name`` of ``spec`` (None: the game's default).

    ``env`` is the real game being played; ``drive`` reads its state.
    """
    check_collect_policy(spec, name)
    if spec.name not in COLLECT_POLICIES:
        return random_policy(spec, rng)
    if spec.name == "doom_take_cover":
        return doom_random_policy(rng)
    if name in ("drive", "explore"):
        if env is None:
            raise ValueError(f"policy {name!r} reads the game's state: pass the game as env")
        if name == "explore":
            return car_drive_policy(
                env, rng, noise=rng.uniform(0.05, 0.3), swerve_p=rng.uniform(0.02, 0.05),
                swerve_max=30, swerve_pedals=True,
            )  # fmt: skip
        return car_drive_policy(env, rng)
    return car_track_policy(rng, fast=name == "fast_track")
