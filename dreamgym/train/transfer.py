"""``dreamgym evaluate --agent``: any agent's scores in dreams and in the real game.

Every agent (an SB3 zip or a controller folder) is loaded first, so a missing,
foreign or mismatched file fails before anything is scored or written; then each
plays ``episodes`` dreams and ``episodes`` real episodes (``dreamgym.transfer``)
and its transfer report is written; ``plot`` draws them all, with ``reports``.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from tqdm import tqdm

from dreamgym.agents import ALGOS, Agent
from dreamgym.envs import game_from_config
from dreamgym.games import GameSpec
from dreamgym.reports import plot_transfer, read_report, write_report
from dreamgym.spaces import PIXELS, check_choice
from dreamgym.transfer import load_agent_for, score_transfer
from dreamgym.world_model import CONFIG_FILE as WM_CONFIG
from dreamgym.world_model import read_json


def _check(config) -> None:
    if config.dream:
        raise ValueError("dream: --agent scores in the dream and the real game; drop --dream")
    if config.controller:
        raise ValueError("controller: --agent names what to score; drop --controller")
    if config.output and len(config.agent) > 1:
        raise ValueError("output: one report path for one --agent; drop it to write each "
                         "report beside its agent")  # fmt: skip
    if config.algo is not None:
        check_choice("algo", config.algo, ALGOS)
    check_choice("pixels", config.pixels, PIXELS)


def report_path(config, agent: Agent, spec: GameSpec, tau: float) -> Path:
    """Where an agent's transfer report goes: ``config.output``, else beside the agent
    (a shipped controller's: under ``runs/evaluate/<game>/``)."""
    if config.output:
        return Path(config.output)
    name = f"transfer_tau{tau:g}" + ("_real_starts" if config.starts == "real" else "")
    name += f"_dropout{config.dropout:g}" if config.dropout is not None else ""
    name += "_raw_frames" if agent.obs_mode == "pixels" and config.pixels == "raw" else ""
    name += (f"_seeds{config.seed}" if config.seed else "") + ".json"
    if agent.kind != "controller":
        return agent.source.parent / f"{agent.source.stem}_{name}"
    from dreamgym.shipped import shipped_dir

    if agent.source.resolve() == shipped_dir(spec).resolve():
        return Path("runs/evaluate") / spec.name / name
    return agent.source / name


def run_agents(config, wm_dir: Path) -> list[Path]:
    """Score every ``config.agent``; write their reports and, with ``plot``, the plot.

    Returns the reports' paths (the plot's last).
    """
    _check(config)
    spec = game_from_config(read_json(wm_dir / WM_CONFIG), str(wm_dir / WM_CONFIG))
    earlier = [read_report(r) for r in config.reports]
    agents = [
        load_agent_for(a, spec.dream_id, wm_dir, config.obs_mode, config.max_steps,
                       config.algo, config.trust_agent)
        for a in config.agent
    ]  # fmt: skip
    written, reports = [], []
    for agent in agents:
        tau = config.tau if config.tau is not None else agent.info.get("tau") or spec.default_tau
        out = report_path(config, agent, spec, tau)
        bar = tqdm(total=2 * config.episodes, desc=f"evaluate {agent.source.name}", unit="ep")
        report = score_transfer(
            agent, spec.dream_id, config.episodes, config.seed, str(wm_dir), tau,
            max_steps=config.max_steps, starts=config.starts, dropout=config.dropout,
            pixels=config.pixels, workers=config.workers, progress=bar.update,
            device=config.device, threads=config.threads or 1,
        )  # fmt: skip
        bar.close()
        report["config"] = asdict(config)
        written.append(write_report(report, out))
        reports.append(report)
    if config.plot:
        written.append(plot_transfer([*reports, *earlier], config.plot))
    return written


__all__ = ["run_agents", "report_path"]
