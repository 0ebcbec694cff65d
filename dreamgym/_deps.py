"""Optional heavy dependencies, imported where used, with an error naming the extra."""

from __future__ import annotations

import importlib


def require(module: str, extra: str):
    """Import ``module`` or raise an ImportError that says which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(
            f"{module} is needed for this; install it with: pip install 'dreamgym[{extra}]'"
        ) from e
