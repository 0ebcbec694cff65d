"""The docs stay true: README's code runs, shell snippets and recipes parse, every public name
has the docstring the API reference shows."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import griffe
import pytest

ROOT = Path(__file__).parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def blocks(lang: str) -> list[tuple[str, str]]:
    """(page:index, code) of every fenced ``lang`` block of the README and the docs pages."""
    fence = re.compile(rf"^```{lang}\n(.*?)^```", re.M | re.S)
    return [(f"{page.relative_to(ROOT)}:{i}", code) for page in PAGES
            for i, code in enumerate(fence.findall(page.read_text()))]  # fmt: skip


def test_the_readme_is_short_and_carries_the_two_set_up_commands():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 150
    commands = [line.split("#")[0].strip() for code in re.findall(r"```sh\n(.*?)```", text, re.S)
                for line in code.splitlines() if line.startswith("make ")]  # fmt: skip
    assert commands == ["make demo", "make test"]
    assert blocks("python"), "README has no python block to run"


@pytest.mark.parametrize(("where", "code"), blocks("python"), ids=[w for w, _ in blocks("python")])
def test_python_blocks_run_as_written(where, code, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, f"{where} failed:\n{out.stderr[-3000:]}"


SHELL = blocks("sh") + [(str(p.relative_to(ROOT)), p.read_text()) for p in
                        sorted((ROOT / "training").glob("*.sh"))]  # fmt: skip


@pytest.mark.parametrize(("where", "code"), SHELL, ids=[w for w, _ in SHELL])
def test_shell_blocks_and_recipes_parse(where, code):
    out = subprocess.run(["bash", "-n"], input=code, capture_output=True, text=True)
    assert out.returncode == 0, f"{where}: {out.stderr}"


def public_modules(module: griffe.Module):
    """The package's modules whose dotted path has no part starting with an underscore."""
    if not any(part.startswith("_") for part in module.path.split(".")[1:]):
        yield module
    for sub in module.modules.values():
        if not sub.is_alias:
            yield from public_modules(sub)


def public_names(module: griffe.Module) -> list[str]:
    """``__all__``, or else the classes and functions the module defines without a leading _."""
    if module.exports is not None:
        return [n if isinstance(n, str) else n.name for n in module.exports]
    return [name for name, member in module.members.items()
            if not name.startswith("_") and not member.is_alias
            and (member.is_class or member.is_function)]  # fmt: skip


def test_every_public_name_has_a_docstring():
    package = griffe.load("dreamgym", search_paths=[str(ROOT)], resolve_aliases=True,
                          resolve_external=False)  # fmt: skip
    checked, missing = 0, []
    for module in public_modules(package):
        if not module.docstring:
            missing.append(f"{module.path} (module)")
        for name in public_names(module):
            member = module.members.get(name)
            target = member.final_target if member is not None and member.is_alias else member
            checked += 1
            if target is None or not target.docstring:
                missing.append(f"{module.path}.{name}")
    assert checked > 100
    assert not missing, "no docstring: " + ", ".join(missing)
