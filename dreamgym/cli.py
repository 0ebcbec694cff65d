"""The ``dreamgym`` command: one subcommand per pipeline stage, a thin layer over ``run``.

Every stage's options are the fields of its config dataclass (``--field-name``),
so the CLI and the library cannot drift apart. Rerunning a command resumes.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import sys
import typing
from pathlib import Path

from dreamgym._io import WriteError
from dreamgym.envs import resolve_game
from dreamgym.workers import WorkerDiedError


def field_docs(cls) -> dict[str, str]:
    """The docstring under each field of a config dataclass, as one line ({} without source)."""
    try:
        body = ast.parse(inspect.getsource(cls)).body[0].body
    except (OSError, TypeError):
        return {}
    docs = {}
    for field, doc in zip(body, body[1:], strict=False):
        if (
            isinstance(field, ast.AnnAssign)
            and isinstance(field.target, ast.Name)
            and isinstance(doc, ast.Expr)
            and isinstance(doc.value, ast.Constant)
            and isinstance(doc.value.value, str)
        ):
            docs[field.target.id] = " ".join(doc.value.value.split())
    return docs


def _add_fields(parser: argparse.ArgumentParser, cls, skip=()) -> None:
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        t = hints[f.name]
        args = [a for a in typing.get_args(t) if a is not type(None)]
        base = args[0] if args else t
        flag = "--" + f.name.replace("_", "-")
        default = None if f.default is dataclasses.MISSING else f.default
        doc = docs.get(f.name, "").replace("%", "%%")
        if base is bool:
            parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=default, help=doc or None
            )
        elif typing.get_origin(t) is tuple:  # tuple[str, ...]: one or more values
            parser.add_argument(
                flag, type=args[0], nargs="+", default=default,
                help=f"{doc} (default: {default})".lstrip(),
            )  # fmt: skip
        else:
            parser.add_argument(
                flag, type=base, default=default, help=f"{doc} (default: {default})".lstrip()
            )


def _config(cls, ns: argparse.Namespace, **fixed):
    names = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in vars(ns).items() if k in names}
    return cls(**{**values, **fixed})


def _stages():
    """Stage name -> (config class, run function, help). Imported lazily: the CLI starts fast."""
    from dreamgym.train import collect, distill, encode, evaluate, evolve, fit_mdnrnn, fit_vae, ppo

    return {
        "collect": (collect.CollectConfig, collect.run, "real-game rollouts into shards"),
        "fit-vae": (fit_vae.FitVAEConfig, fit_vae.run, "train V on the shards"),
        "encode": (encode.EncodeConfig, encode.run, "frames -> (mu, logvar); first-frame bank"),
        "fit-mdnrnn": (fit_mdnrnn.FitMDNRNNConfig, fit_mdnrnn.run, "train M on the latents"),
        "evolve": (evolve.EvolveConfig, evolve.run, "CMA-ES controller in the dream"),
        "ppo": (ppo.PPOConfig, ppo.run, "PPO (Stable-Baselines3) trains C in the dream"),
        "distill": (distill.DistillConfig, distill.run, "carry a controller to the run's M"),
        "evaluate": (
            evaluate.EvaluateConfig,
            evaluate.run,
            "score a controller, or any agent (--agent) in dreams and the real game",
        ),  # fmt: skip
    }


GAME_HELP = (
    "doom_take_cover, car_racing, a Gymnasium id with pixel observations "
    "(MiniGrid-Empty-5x5-v0; module:EnvId imports its package first), or module:object "
    "naming a dreamgym.GameSpec"
)

PIPELINE = ("collect", "fit-vae", "encode", "fit-mdnrnn", "evolve", "evaluate")
"""The stages ``pipeline`` runs, in order (``ppo`` is run by hand, after evolve)."""


def load_preset(game: str, preset: str) -> dict:
    """Stage configs of a preset: ``training/presets/<game>.json`` (installed as package
    data), a JSON file, or presets scaled to a user's game (``train.presets``)."""
    from dreamgym.train import presets

    return presets.load_preset(resolve_game(game), preset)


def default_run_dir(game: str, preset: str) -> str:
    """``runs/<game name>-<preset>`` (a Gymnasium id's game name: ``ALE/Pong-v5`` -> ``pong``)."""
    return f"runs/{resolve_game(game).name}-{Path(preset).stem}"


def run_pipeline(game: str, preset: str, run_dir: str, stages: dict | None = None) -> Path:
    """Every stage in order with the preset's configs; each resumes where it stopped.

    ``game``: a game name, a Gymnasium id with pixels or ``module:object`` (see
    ``CollectConfig.game``)."""
    from dreamgym.train.evaluate import format_table
    from dreamgym.train.export import assemble
    from dreamgym.train.provenance import format_status, status

    stages = stages or _stages()
    cfg = load_preset(game, preset)
    run_dir = Path(run_dir)
    if (run_dir / "run.json").exists():
        print(f"== status\n{format_status(status(run_dir))}", flush=True)
    evolve_dir = None
    for name in PIPELINE:
        cls, fn, _ = stages[name]
        entry = cfg.get(name.replace("-", "_"), {})
        # A list runs in order: collect's top-ups (one per collection policy), or phases
        # of a training stage (fit-vae resumed with another lr or danger weight).
        for kwargs in entry if isinstance(entry, list) else [entry]:
            kwargs = {**kwargs, "game": game} if name == "collect" else dict(kwargs)
            print(f"== {name}", flush=True)
            if name == "evaluate":
                print(format_table(fn(cls(**kwargs), evolve_dir)), flush=True)
                continue
            result = fn(cls(**kwargs), run_dir)
            if name == "fit-mdnrnn":
                assemble(run_dir)
            if name == "evolve":
                evolve_dir = result
    return run_dir


def main(argv: list[str] | None = None) -> int:
    """The ``dreamgym`` command: parse ``argv``, run one stage, return the exit code."""
    parser = argparse.ArgumentParser(prog="dreamgym", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    stages = _stages()
    for name, (cls, _, help_) in stages.items():
        p = sub.add_parser(name, help=help_)
        if name == "collect":
            p.add_argument("game", help=GAME_HELP)
            p.add_argument("--run", required=True, help="run directory")
            _add_fields(p, cls, skip=("game",))
        elif name == "evaluate":
            p.add_argument(
                "source", help="run directory, evolve directory, model folder or game name "
                "(with --agent: where the world model is)",
            )  # fmt: skip
            _add_fields(p, cls)
        else:
            p.add_argument("run", help="run directory")
            _add_fields(p, cls)
    p = sub.add_parser("export", help="world model + controller -> a model folder")
    p.add_argument("run")
    p.add_argument("dest")
    p.add_argument("--controller", default=None, help="folder with controller.safetensors")
    p = sub.add_parser("pipeline", help="collect to evaluate, in order (not ppo)")
    p.add_argument("game", help=GAME_HELP)
    p.add_argument("--preset", default="cpu", help="tiny, cpu, paper, or a JSON file")
    p.add_argument("--run", default=None, help="run directory (default: runs/<game>-<preset>)")
    p = sub.add_parser("status", help="which stages of a run are current, stale or missing")
    p.add_argument("run", help="run directory")
    for p in [parser, *sub.choices.values()]:
        p.add_argument(
            "--debug", action="store_true", default=argparse.SUPPRESS,
            help="show the traceback of an error instead of one line",
        )  # fmt: skip
    ns = parser.parse_args(argv)
    try:
        return _run_command(ns, stages)
    except (ValueError, OSError, WorkerDiedError) as e:
        if getattr(ns, "debug", False):
            raise
        _close_progress_bars()
        print(f"dreamgym {ns.command}: error: {_one_line(e)}", file=sys.stderr)
        return 2


def _one_line(e: Exception) -> str:
    msg = " ".join(str(e).split()) or type(e).__name__
    if isinstance(e, OSError) and not isinstance(e, WriteError) and e.filename:
        msg = f"{e.filename}: {e.strerror or msg}"
    return msg


def _close_progress_bars() -> None:
    """End every open progress bar's line, so that the error starts a line of its own."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def _run_command(ns: argparse.Namespace, stages: dict) -> int:
    if ns.command == "status":
        from dreamgym.train.common import open_run
        from dreamgym.train.provenance import format_status, status

        run_dir, _ = open_run(ns.run)
        rows = status(run_dir)
        print(format_status(rows))
        return 0
    from dreamgym.train.evaluate import format_table

    if ns.command == "pipeline":
        run_pipeline(ns.game, ns.preset, ns.run or default_run_dir(ns.game, ns.preset), stages)
    elif ns.command == "export":
        from dreamgym.train.export import export

        print(export(ns.run, ns.dest, ns.controller))
    else:
        cls, fn, _ = stages[ns.command]
        if ns.command == "collect":
            out = fn(_config(cls, ns, game=ns.game), ns.run)
        elif ns.command == "evaluate":
            out = fn(_config(cls, ns), ns.source)
            for path in out if isinstance(out, list) else [out]:
                if path.suffix == ".json":
                    print(format_table(path))
                print(path)
            return 0
        else:
            out = fn(_config(cls, ns), ns.run)
        if ns.command == "fit-mdnrnn":
            from dreamgym.train.export import assemble

            assemble(ns.run)
        print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
