"""The project's own documents live in the repository: citations of the design notes resolve to
docs/design.md and its sections, nothing cites files outside the repository, and DEVELOPERS.md speaks
to any contributor."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DESIGN = REPO / "docs" / "design.md"


def _text_files():
    listed = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True)
    for rel in listed.stdout.split():
        path = REPO / rel
        if path == Path(__file__).resolve():
            continue  # this file names what it looks for
        if path.suffix in (".py", ".md", ".toml", ".txt") and path.is_file():
            yield rel, path.read_text(errors="replace")


def _sections():
    return {int(n) for n in re.findall(r"^## (\d+)\. ", DESIGN.read_text(), re.M)}


def test_design_citations_resolve():
    assert DESIGN.is_file(), "docs/design.md is missing"
    sections = _sections()
    assert {3, 4, 5, 6} <= sections, sections
    bad = []
    for rel, text in _text_files():
        for m in re.finditer(r"design\.md\)?,? (?:section |§)(\d+)", text, re.I):
            if int(m.group(1)) not in sections:
                bad.append(f"{rel}: {m.group(0)} (no such section)")
        if "DESIGN.md" in text:
            bad.append(f"{rel}: cites DESIGN.md, which is docs/design.md")
    assert not bad, "\n".join(bad)


def test_nothing_cites_files_outside_the_repository():
    outside = re.compile(r"PERF-NOTES|\.\./shared/(?!data\b)")
    bad = [f"{rel}: {m.group(0)}" for rel, text in _text_files() for m in outside.finditer(text)]
    assert not bad, "\n".join(bad)


def test_developers_guide_is_for_any_contributor():
    text = (REPO / "DEVELOPERS.md").read_text()
    assert not re.search(r"`device` tool|\blends?\b|its `status`", text), "DEVELOPERS.md names a workspace-only tool"
    assert "NVIDIA GPU" in text and "BITNET_TEST_CUDA=gpu" in text and "docs/design.md" in text


def test_the_docs_say_where_training_runs():
    for page in ("README.md", "docs/training.md"):
        text = " ".join((REPO / page).read_text().split())
        assert "Training runs on the CPU" in text and "on an NVIDIA GPU" in text and "gpu-training.md" in text, page
    assert "until GPU training exists" not in (REPO / "docs/gpu.md").read_text()
    assert "[gpu-training.md](gpu-training.md)" in (REPO / "docs/gpu.md").read_text()
