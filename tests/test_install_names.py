"""Install instructions name the distribution `bitnet-bnn`: PyPI's `bitnet` is an unrelated project."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NAME = "bit" + "net"  # spelled in two parts so that this file does not match its own pattern

# `pip install` (then anything up to the end of that shell command) and the bare distribution name,
# optionally quoted, with or without extras: "bitnet[cuda]", bitnet, 'bitnet' -- not bitnet-bnn.
WRONG = re.compile(r"pip3?\s+install\b[^\n&;|`]*?(?<![\w./-])[\"']?" + NAME + r"(?![\w-])")


def _text_files():
    listed = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True)
    paths = listed.stdout.split() if listed.returncode == 0 else [str(p.relative_to(REPO)) for p in REPO.rglob("*")]
    for rel in paths:
        path = REPO / rel
        if path.suffix in (".py", ".md", ".toml", ".txt", ".cfg", ".sh", ".ipynb") or rel == ".ci/run":
            if path.is_file():
                yield rel, path.read_text(errors="replace")


def test_the_pattern_catches_the_wrong_names_only():
    wrong = [f'pip install "{NAME}[cuda]"', f"pip install {NAME}", f"python -m pip install '{NAME}[test]' numba",
             f"`pip install {NAME}`"]
    right = [f'pip install "{NAME}-bnn[cuda]"', f"pip install {NAME}-bnn", 'python -m pip install -e ".[test]"',
             f'pip install -e ".[test]" && {NAME} train --model lenet', "pip install torch"]
    assert all(WRONG.search(s) for s in wrong), [s for s in wrong if not WRONG.search(s)]
    assert not any(WRONG.search(s) for s in right), [s for s in right if WRONG.search(s)]


def test_no_file_tells_users_to_install_the_wrong_distribution():
    found = [f"{rel}:{text.count(chr(10), 0, m.start()) + 1}: {m.group(0)}"
             for rel, text in _text_files() for m in WRONG.finditer(text)]
    assert not found, f"install the distribution {NAME}-bnn, not {NAME}:\n" + "\n".join(found)
