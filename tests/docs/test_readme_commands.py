"""The README's first two commands (install + main job, tests) are what CI runs, word for word, and
need no path to data: a new user's machine has no ../shared/data."""
from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def readme_commands() -> list[str]:
    """The indented command lines of the README before its first horizontal rule."""
    head = (REPO / "README.md").read_text().split("\n---\n", 1)[0]
    return [line.strip() for line in head.splitlines() if line.startswith("    ") and line.strip()]


def test_ci_runs_the_readme_commands():
    commands = readme_commands()
    assert len(commands) == 2 and commands[0].startswith("python -m pip install -e "), commands
    ci = (REPO / ".ci" / "run").read_text()
    for command in commands:
        assert re.search(rf"^{re.escape(command)}( \| tee .*)?$", ci, re.M), f".ci/run does not run {command!r}"


def test_the_main_command_needs_no_data_path():
    main_job = readme_commands()[0]
    assert "bitnet train" in main_job and "--data-dir" not in main_job and "shared" not in main_job
