"""The evaluate stage: a trained controller's scores in the real game or the dream,
or any agent's scores in both.

``run(config, source)`` scores a controller with the evaluators of
``dreamgym.rollouts`` and writes a JSON report (see ``format_table``). With
``agent`` (``--agent PATH ...``: SB3 zips or controller folders) it scores each
agent in dreams and real episodes with ``dreamgym.transfer`` and writes a
transfer report per agent, and with ``plot`` draws them side by side.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm import tqdm

from dreamgym import dream_core as dc
from dreamgym._version import __version__
from dreamgym.games import get_game
from dreamgym.policy import CONFIG_FILE, check_reads, read_controller
from dreamgym.pools import check_backend
from dreamgym.reports import format_transfer, score_text, summary
from dreamgym.rollouts import DreamEvaluator, RealEvaluator
from dreamgym.spaces import STARTS
from dreamgym.train.common import WORLD_MODEL_DIR, check_options, set_threads, stage_folders
from dreamgym.world_model import CONFIG_FILE as WM_CONFIG
from dreamgym.world_model import WorldModel, atomic_write_text

# ---------------------------------------------------------------- the evaluate stage


@dataclass
class EvaluateConfig:
    """Settings of the ``evaluate`` stage: a controller's scores in the real game or the dream."""

    episodes: int = 100
    """Episodes to score (real: episode i uses game seed ``seed + i``)."""
    workers: int = 2
    """Real-game worker processes."""
    backend: str = "local"
    """Where the real-game workers run: ``local`` processes, or ``ray`` actors on a Ray
    cluster (``pip install 'dreamgym[ray]'``; the same seeds give the same returns)."""
    ray_address: str | None = None
    """The Ray cluster to join (with ``backend`` ``ray``; None: start a local Ray)."""
    seed: int = 0
    """Seed of the first episode (real), or of the whole batch of dreams (dream)."""
    dream: bool = False
    """Score in the dream instead of the real game."""
    tau: float | None = None
    """Dream temperature (with ``dream``; None: the one the controller was trained at)."""
    max_steps: int | None = None
    """Episode limit (None: the game's)."""
    dropout: float | None = None
    """Dropout rate of M's heads in the dream (with ``dream``; None: the rate M was
    trained with; 0: none)."""
    starts: str = "first"
    """Where dreams start (with ``dream``): real ``first`` frames, or ``real`` states
    from the world model's bank (as ``gym.make(..., starts="real")``)."""
    controller: str | None = None
    """Controller folder (None: the one in the source; in a run directory, the only
    evolve folder or the one trained at ``tau``)."""
    output: str | None = None
    """JSON report path (None: ``evaluate_real.json``, or ``evaluate_real_seeds<seed>.json``
    from another first seed, / ``evaluate_dream_tau<tau>.json`` in the controller's
    folder; for a shipped controller, in ``runs/evaluate/<game>/``, so the shipped
    reports are never overwritten)."""
    device: str = "cpu"
    """Torch device of the dream."""
    threads: int | None = None
    """Torch threads of this process (None: torch's default; with --agent, 1, the fastest
    for the dreams' small per-step batches on a shared machine)."""
    agent: tuple[str, ...] = ()
    """Agents to score in ``episodes`` dreams and as many real episodes each: SB3 zips
    (``model.save``) or controller folders; the source then only gives the world model.
    One transfer report each (``<zip stem>_transfer_tau<tau>.json`` beside a zip,
    ``transfer_tau<tau>.json`` in a controller folder)."""
    algo: str | None = None
    """SB3 algorithm of the --agent zips: ppo, a2c, sac or td3 (None: read from the zip)."""
    trust_agent: bool = False
    """Load --agent zips with SB3's own load, which unpickles them (runs code from the
    file), for agents the default loader cannot rebuild from their weights (a custom
    policy or network): only for files you trust."""
    obs_mode: str | None = None
    """What --agent observes: latent or pixels (None: the zip's saved observation space)."""
    pixels: str = "reconstructed"
    """With pixels, the real game as V's reconstruction of each frame (reconstructed, what
    the dream shows) or as its raw 64x64 frames (raw)."""
    plot: str | None = None
    """Image path (.png, .svg): dream and real scores of every --agent (and --reports)
    side by side."""
    reports: tuple[str, ...] = ()
    """Transfer reports written before, drawn beside the --agent ones in --plot."""


def _source_path(source) -> Path:
    """``source`` as a path; a game name means its shipped model folder."""
    path = Path(source)
    if not path.exists():
        from dreamgym.games import GAMES, models_root
        from dreamgym.shipped import shipped_dir

        if str(source) in GAMES:
            path = shipped_dir(source)
        elif (models_root() / str(source)).is_dir():  # a shipped game not registered yet
            path = models_root() / str(source)
        else:
            raise FileNotFoundError(f"{source}: no such run directory or model folder")
    return path


def world_model_dir(source) -> Path:
    """The world-model folder of a model folder, a run dir, a folder in a run, or a game."""
    path = _source_path(source)
    for folder in (path, path / WORLD_MODEL_DIR, path.parent / WORLD_MODEL_DIR):
        if (folder / WM_CONFIG).is_file():
            return folder
    raise FileNotFoundError(
        f"{path}: neither a model folder ({WM_CONFIG}, weights.safetensors) nor a run "
        f"directory with a {WORLD_MODEL_DIR}/ (run fit-mdnrnn first)"
    )


def resolve_source(source, controller: str | None = None, tau: float | None = None):
    """(world-model folder, controller folder) of a run dir, an evolve dir or a model folder.

    A game name means its shipped model folder.
    """
    path = _source_path(source)
    if (path / WM_CONFIG).is_file():  # a model folder: world model and controller together
        return path, Path(controller) if controller else path
    if (path.parent / WORLD_MODEL_DIR / WM_CONFIG).is_file() and (path / CONFIG_FILE).is_file():
        return path.parent / WORLD_MODEL_DIR, Path(controller) if controller else path
    wm_dir = path / WORLD_MODEL_DIR
    if not (wm_dir / WM_CONFIG).is_file():
        raise FileNotFoundError(
            f"{path}: neither a model folder ({WM_CONFIG}, weights.safetensors) nor a run "
            f"directory with a {WORLD_MODEL_DIR}/ (run fit-mdnrnn first)"
        )
    if controller:
        return wm_dir, Path(controller)
    found = [p for p in stage_folders(path, "evolve") if (p / CONFIG_FILE).is_file()]
    at_tau = [p for p in found if tau is not None and _trained_tau(p) == f"{tau:g}"]
    if len(at_tau) > 1:  # a run of older versions: the folder named by tau alone, if any
        at_tau = [p for p in at_tau if p.name == f"evolve_tau{tau:g}"] or at_tau
    if len(at_tau) == 1:
        return wm_dir, at_tau[0]
    if len(found) == 1:
        return wm_dir, found[0]
    if not found:
        raise FileNotFoundError(f"{path}: no trained controller yet; run evolve first")
    names = ", ".join(f"{p.name} (tau {_trained_tau(p) or 'real'})" for p in found)
    raise ValueError(f"{path}: several controllers ({names}); choose one with --controller")


def _trained_tau(folder: Path) -> str | None:
    """The dream temperature a controller folder's ``controller.json`` records, as ``%g``."""
    try:
        tau = json.loads((folder / CONFIG_FILE).read_text()).get("tau")
    except (OSError, ValueError, AttributeError):
        return None
    return None if tau is None else f"{tau:g}"


def report_name(mode: str, tau: float, starts: str, seed: int, dropout: float | None = None) -> str:
    """The report's file name: ``evaluate_real[_seeds<seed>].json`` (other tracks, their
    own report) or ``evaluate_dream_tau<tau>[_real_starts][_dropout<p>].json``."""
    if mode == "real":
        return "evaluate_real" + (f"_seeds{seed}" if seed else "") + ".json"
    name = f"evaluate_dream_tau{tau:g}" + ("_real_starts" if starts == "real" else "")
    return name + (f"_dropout{dropout:g}" if dropout is not None else "") + ".json"


def _report_dir(ctrl_dir: Path, game: str) -> Path:
    """Where a report goes by default: next to the controller, unless it is a shipped one."""
    from dreamgym.shipped import shipped_dir

    if ctrl_dir.resolve() == shipped_dir(game).resolve():
        return Path("runs/evaluate") / game
    return ctrl_dir


def _check(config: EvaluateConfig) -> None:
    if config.episodes < 1:
        raise ValueError(f"episodes: expected an integer >= 1, got {config.episodes}")
    dreams = config.dream or bool(config.agent)
    if config.starts not in STARTS or (config.starts == "real" and not dreams):
        raise ValueError(
            f"starts: expected one of {STARTS} ('real' with dream), got {config.starts!r}"
        )
    check_options(config, positive=("workers", "tau", "max_steps", "threads"))
    check_backend(config.backend, config.ray_address)
    if config.backend != "local" and dreams:
        raise ValueError(
            "backend: the dream and --agent run in this process; --backend ray is for the "
            "real game of a controller"
        )
    if config.dropout is not None and not dreams:
        raise ValueError("dropout: the real game has no M to drop out of; use it with dream")
    dc.check_dropout(config.dropout)
    agent_only = ("algo", "trust_agent", "obs_mode", "plot", "reports")
    defaults = EvaluateConfig()
    changed = [k for k in (*agent_only, "pixels") if getattr(config, k) != getattr(defaults, k)]
    if changed and not config.agent:
        raise ValueError(f"{changed[0]}: applies to --agent; pass at least one --agent")


def _evaluator(config: EvaluateConfig, wm: WorldModel, wm_dir: Path, tau: float, controller):
    """(the dream or real-game evaluator of ``config``, the seeds its report lists)."""
    if not config.dream:
        evaluator = RealEvaluator(
            wm_dir, config.workers, config.max_steps, controller=controller.config,
            backend=config.backend, ray_address=config.ray_address,
        )  # fmt: skip
        return evaluator, [config.seed + i for i in range(config.episodes)]
    if config.starts == "real" and wm.starts is None:
        raise ValueError(f"starts: {wm_dir} has no bank of real states; use starts='first'")
    starts = wm.starts if config.starts == "real" else None
    evaluator = DreamEvaluator(
        wm, tau, config.max_steps, controller=controller.config, starts=starts,
        dropout=config.dropout,
    )  # fmt: skip
    return evaluator, [config.seed]  # one generator draws every dream


def run(config: EvaluateConfig, source) -> Path | list[Path]:
    """Score a controller; write and return the JSON report (see ``format_table``).

    With ``config.agent``: score every agent (``run_agents``) and return the list of
    their reports (and the plot's path, last, with ``plot``).
    """
    _check(config)
    if config.agent:
        from dreamgym.train.transfer import run_agents

        return run_agents(config, world_model_dir(source))
    set_threads(config.threads)
    wm_dir, ctrl_dir = resolve_source(source, config.controller, config.tau)
    wm = WorldModel.load(wm_dir)  # names the file of a broken or diverged world model
    controller, info = read_controller(ctrl_dir, game=wm.game.name)
    check_reads(controller, wm, "--controller", ctrl_dir)
    spec, mode = get_game(info["game"]), "dream" if config.dream else "real"
    tau = config.tau if config.tau is not None else info.get("tau") or spec.default_tau
    if config.dream:
        wm = wm.to(config.device)
    evaluator, seeds = _evaluator(config, wm, wm_dir, tau, controller)
    bar = tqdm(total=config.episodes, desc=f"evaluate {spec.name} ({mode})", unit="ep")
    t0 = time.time()
    with evaluator:
        params = controller.get_flat().numpy()[None]
        returns = evaluator.returns(params, config.episodes, config.seed, bar.update)[0]
    bar.close()
    dream = config.dream
    result = {
        "mode": mode,
        "game": spec.name,
        "tau": tau if dream else None,
        "starts": config.starts if dream else None,
        "dropout": (wm.dropout if config.dropout is None else config.dropout) if dream else None,
        "trained_tau": info.get("tau"),
        "episodes": config.episodes,
        **summary(returns),  # mean, std, ci95, min, max, returns
        "seeds": seeds,
        "max_steps": config.max_steps or spec.max_episode_steps,
        "wall_seconds": round(time.time() - t0, 3),
        "controller": str(ctrl_dir),
        "world_model": str(wm_dir),
        "dreamgym_version": __version__,
        "config": asdict(config),
    }
    name = report_name(mode, tau, config.starts, config.seed, config.dropout)
    out = Path(config.output) if config.output else _report_dir(ctrl_dir, spec.name) / name
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    return out


def format_table(result: dict | str | Path) -> str:
    """A printable table of an evaluation report (the dict, or the JSON file)."""
    if not isinstance(result, dict):
        result = json.loads(Path(result).read_text())
    if result.get("mode") == "transfer":
        return format_transfer(result)
    where = "real game" if result["mode"] == "real" else f"dream, tau {result['tau']:g}"
    if result.get("starts") == "real":
        where += ", real starts"
    scale = max(abs(result["min"]), abs(result["max"]))
    rows = [
        ("game", result["game"]),
        ("scored in", where),
        ("controller", result["controller"]),
        ("trained at tau", "-" if result.get("trained_tau") is None else result["trained_tau"]),
        ("episodes", result["episodes"]),
        ("mean ± std", "{} ± {}".format(*score_text(result["mean"], result["std"], scale=scale))),
        *(
            [("95% CI of the mean", "{} to {}".format(*score_text(*result["ci95"], scale=scale)))]
            if result.get("ci95")
            else []
        ),
        ("min / max", "{} / {}".format(*score_text(result["min"], result["max"], scale=scale))),
        ("wall time", f"{result['wall_seconds']:.1f} s"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


__all__ = ["EvaluateConfig", "run", "format_table", "world_model_dir", "resolve_source"]
