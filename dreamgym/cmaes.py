"""CMA-ES behind ``ask()`` / ``tell(fitness)``, fitness maximised, its state in arrays and JSON.

``CMAES`` wraps pycma (the sign flip of a minimiser lives in ``tell``); its
``state()`` / ``load_state()`` hold pycma's internals that change between
generations, so a checkpoint restores a search that continues bit for bit. The
pycma versions whose internals it reads are pinned in ``pyproject.toml``.
"""

from __future__ import annotations

import math

import cma
import numpy as np


class CMAES:
    """pycma's CMA-ES behind ``ask()`` / ``tell(fitness)``, where higher fitness is better.

    Sampling draws from a numpy Generator seeded by ``seed``, so runs repeat and the
    whole state fits in arrays and JSON (``state`` / ``load_state``).
    """

    # the attributes that change between generations (pycma 4.x with CSA step size; the
    # round-trip test checks that a restored strategy continues bit for bit)
    _STATE = {
        "es": ("mean", "mean_old", "sigma", "_sigma_old", "pc", "countiter", "countevals",
               "itereigenupdated", "count_eigen"),
        "sm": ("C", "B", "D", "count_tell", "count_eigen", "last_update",
               "_beta_diagonal_acceleration", "_corr_condition", "_corr_condition_count_eigen"),
        "adapt_sigma": ("ps", "delta", "_ps_updated_iteration"),
    }  # fmt: skip

    def __init__(
        self, num_params: int, popsize: int = 64, sigma0: float = 0.1, seed: int = 0, x0=None
    ):
        if num_params < 1 or popsize < 3 or not sigma0 > 0:
            raise ValueError(
                f"CMAES: expected num_params >= 1, popsize >= 3 and sigma0 > 0, got "
                f"{num_params}, {popsize}, {sigma0}"
            )
        self.rng = np.random.default_rng(seed)
        opts = {
            "popsize": popsize,
            "randn": lambda *shape: self.rng.standard_normal(shape),
            "seed": np.nan,  # pycma must not touch numpy's global RNG
            "AdaptSigma": cma.sigma_adaptation.CMAAdaptSigmaCSA,
            "CMA_mirrors": 0,
            "stall_sigma_change_on_divergence_iterations": False,
            "verbose": -9,
            "verb_disp": 0,
            "verb_log": 0,
        }
        x0 = np.zeros(num_params) if x0 is None else np.asarray(x0, np.float64)
        if x0.shape != (num_params,):
            raise ValueError(f"x0: expected shape ({num_params},), got {x0.shape}")
        self.es = cma.CMAEvolutionStrategy(x0, sigma0, opts)
        self.num_params, self.popsize = num_params, popsize
        self.best_x, self.best_f = np.zeros(num_params), -math.inf
        self._asked: list | None = None

    @property
    def generation(self) -> int:
        """Generations told so far."""
        return int(self.es.countiter)

    @property
    def mean(self) -> np.ndarray:
        return np.array(self.es.mean, dtype=np.float64)

    @property
    def sigma(self) -> float:
        return float(self.es.sigma)

    def ask(self) -> np.ndarray:
        """The next population, (popsize, num_params)."""
        if self._asked is None:
            self._asked = self.es.ask()
        return np.array(self._asked)

    def tell(self, fitness) -> None:
        """Fitness (popsize,) of the last ``ask``, higher is better."""
        f = np.asarray(fitness, dtype=np.float64).reshape(-1)
        if self._asked is None:
            raise RuntimeError("tell: call ask() first")
        if f.shape != (len(self._asked),) or not np.isfinite(f).all():
            raise ValueError(
                f"fitness: expected {len(self._asked)} finite values, got shape {f.shape} "
                f"with {int((~np.isfinite(f)).sum())} not finite"
            )
        i = int(np.argmax(f))
        if f[i] > self.best_f:
            self.best_f, self.best_x = float(f[i]), np.array(self._asked[i])
        self.es.tell(self._asked, list(-f))  # pycma minimises
        self._asked = None

    def state(self) -> tuple[dict[str, np.ndarray], dict]:
        """Everything a new ``CMAES`` needs to continue: (arrays, JSON-able values)."""
        arrays = {"best_x": self.best_x}
        values = {
            "best_f": self.best_f,
            "rng": self.rng.bit_generator.state,
            "num_params": self.num_params,
            "popsize": self.popsize,
        }
        for owner, keys in self._STATE.items():
            obj = self.es if owner == "es" else getattr(self.es, owner)
            for k in keys:
                v = getattr(obj, k, None)
                if isinstance(v, np.ndarray) and v.ndim > 0:
                    arrays[f"{owner}.{k}"] = v
                elif v is not None:
                    values[f"{owner}.{k}"] = v.item() if isinstance(v, np.generic) else v
        return arrays, values

    def load_state(self, arrays: dict[str, np.ndarray], values: dict) -> None:
        if (values.get("num_params"), values.get("popsize")) != (self.num_params, self.popsize):
            raise ValueError(
                f"CMA state of {values.get('num_params')} parameters, popsize "
                f"{values.get('popsize')}; this run has {self.num_params}, {self.popsize}"
            )
        for key, v in [*arrays.items(), *values.items()]:
            owner, _, k = key.partition(".")
            if owner in self._STATE:
                obj = self.es if owner == "es" else getattr(self.es, owner)
                setattr(obj, k, np.array(v) if isinstance(v, np.ndarray) else v)
        if hasattr(self.es, "_updateBDfromSM"):
            self.es._updateBDfromSM(self.es.sm)  # the strategy's copies of the sampler's B, D
        self.es.timer = cma.utilities.utils.ElapsedWCTime()  # made by the first ask()
        self.best_x, self.best_f = np.array(arrays["best_x"]), float(values["best_f"])
        self.rng.bit_generator.state = values["rng"]
        self._asked = None


__all__ = ["CMAES"]
