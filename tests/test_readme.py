"""The commands the README and the docs pages show name real commands, make targets and flags.

Nothing is run. Each line of a ```bash block that runs ``rtml``, ``python -m pipelines.X`` (or
``templates.X``), a benchmark script or ``make`` is checked in this process: the command exists, and
every ``--flag`` it gives is one that the command's own parser accepts. That parser is caught as the
command starts parsing an empty command line (``rtml score`` calls ``pipelines.score.run``), so a flag
counts only if the command itself would take it.
"""
from __future__ import annotations

import argparse
import functools
import importlib
import importlib.util
import inspect
import pathlib
import re
import shlex
from unittest import mock

import pytest

from pipelines import rtml

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]


def commands(page: pathlib.Path) -> list[str]:
    """The command lines of a page's bash blocks, comments dropped; a line that ends in a backslash, or is
    indented, continues the one before it."""
    found = []
    for block in re.findall(r"^```bash\n(.*?)^```", page.read_text(), re.M | re.S):
        lines = []
        for line in block.splitlines():
            line = re.sub(r"(^|\s)#.*", "", line).rstrip()
            if lines and (lines[-1].endswith("\\") or line[:1].isspace()):
                lines[-1] = lines[-1].rstrip("\\") + " " + line.strip()
            elif line:
                lines.append(line)
        found += lines
    return found


def program(line: str) -> tuple[str, str, list[str]] | None:
    """What a command line runs: ("rtml", its command, arguments), ("module", a module or a benchmark's path,
    arguments) or ("make", "", arguments); None for anything else (pytest, Beam's own modules, the shell)."""
    words = shlex.split(line)
    for at, word in enumerate(words):
        name, rest = word.rsplit("/", 1)[-1], words[at + 1:]
        if name == "rtml":
            command = "demo stream" if rest[:2] == ["demo", "stream"] else " ".join(rest[:1])
            return "rtml", command, rest[len(command.split()):]
        if name.startswith("python") and " ".join(rest[:2]).startswith(("-m pipelines.", "-m templates.")):
            return "module", rest[1], rest[2:]
        if name.startswith("python") and rest[:1] and rest[0].startswith("benchmarks/"):
            return "module", rest[0], rest[1:]
        if name == "make":
            return "make", "", rest
    return None


def module_of(kind: str, name: str) -> str:
    return rtml.COMMANDS[name][0] if kind == "rtml" else name


def flags(arguments: list[str]) -> set[str]:
    """The --flags among a command's arguments, optional ones too (``[--force]``, ``--dry_run=True``)."""
    return {match.group(1) for word in arguments if (match := re.match(r"\[*(--[a-z][a-z0-9_-]*)", word))}


class _Caught(Exception):
    pass


@functools.cache
def accepted_flags(module_name: str) -> frozenset[str]:
    """The flags of the parser a command builds: its ``run``, else ``parse_args``, else ``main`` is called with an
    empty command line and stopped as it starts parsing."""
    if module_name.endswith(".py"):
        spec = importlib.util.spec_from_file_location(pathlib.Path(module_name).stem, ROOT / module_name)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        module = importlib.import_module(module_name)
    entry = next(getattr(module, name) for name in ("run", "parse_args", "main") if hasattr(module, name))
    caught = []

    def catch(parser, *args, **kwargs):
        caught.append(parser)
        raise _Caught

    with mock.patch.object(argparse.ArgumentParser, "parse_known_args", catch), pytest.raises(_Caught):
        entry([]) if inspect.signature(entry).parameters else entry()
    return frozenset(option for action in caught[0]._actions for option in action.option_strings)


def make_targets_and_variables() -> tuple[set[str], set[str]]:
    text = (ROOT / "Makefile").read_text()
    variables = dict(re.findall(r"^(\w+)\s*[:?]?=\s*(.*)$", text, re.M))
    targets = {re.sub(r"\$\((\w+)\)", lambda m: variables[m.group(1)], target)
               for rule in re.findall(r"^([^\s#:=][^:=]*?):(?!=)", text, re.M) for target in rule.split()}
    return targets, set(variables)


SHOWN = [(page, line) for page in PAGES for line in commands(page) if program(line)]


@pytest.mark.parametrize("page, line", SHOWN, ids=[f"{page.name}: {line[:60]}" for page, line in SHOWN])
def test_a_shown_command_exists_with_the_flags_it_gives(page, line):
    kind, name, arguments = program(line)
    if kind == "make":
        targets, variables = make_targets_and_variables()
        assert [word for word in arguments if "=" not in word and word not in targets] == [], "not a make target"
        assert [word for word in arguments if "=" in word and word.split("=")[0] not in variables] == []
        return
    assert kind != "rtml" or name in rtml.COMMANDS, f"rtml has no command {name!r}"
    module = module_of(kind, name)
    assert (ROOT / module).is_file() if module.endswith(".py") else importlib.util.find_spec(module), module
    if flags(arguments):
        assert flags(arguments) - accepted_flags(module) == set(), f"flags that {module} does not take"


def test_the_readme_shows_every_command_and_stays_a_guide():
    shown = {module_of(*program(line)[:2]) for line in commands(README) if program(line)}
    assert {module for module, _ in rtml.COMMANDS.values()} <= shown
    assert "make test" in commands(README)  # .ci/run runs the README's test command verbatim
    assert len(README.read_text().splitlines()) <= 420  # "at most about 400": details belong in docs/
