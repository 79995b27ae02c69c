"""Every ```python block of README.md and docs/*.md runs as written.

The blocks of one page run in order in one namespace, in a subprocess whose working directory is a
fresh temporary folder (files a snippet writes land there), with BITNET_DATA pointing at the data
sets (nothing is downloaded). A block fenced ```python gpu needs an NVIDIA GPU: on a machine
without CUDA the page's GPU blocks are skipped (with the reason), and its other blocks still run.
Blocks not meant to run (shell commands, output) use other fences. A failure names the page, the
block and its line.
"""
from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^```python([^\n`]*)\n(.*?)^```\s*$", re.M | re.S)

# Runs the blocks given on stdin (JSON) in one namespace; the code is compiled under the page's name
# with the block's own line numbers, so a traceback points into the page.
RUNNER = r"""
import json, sys, time, traceback
job = json.load(sys.stdin)
sys.path.insert(0, job["repo"])
namespace = {"__name__": "__main__"}
for number, block in enumerate(job["blocks"], 1):
    print(f"[{job['page']}, block {number}, line {block['line']}]", flush=True)
    start = time.perf_counter()
    try:
        exec(compile("\n" * block["line"] + block["code"], job["page"], "exec"), namespace)
    except BaseException:
        traceback.print_exc()
        print(f"FAILED: {job['page']}, block {number} (the ```python block at line {block['line']})",
              file=sys.stderr)
        sys.exit(1)
    print(f"[block {number}: {time.perf_counter() - start:.1f} s]", flush=True)
"""


def blocks(page: Path) -> list[dict]:
    """The page's ```python blocks: code, the line where the code starts, and whether it needs a GPU."""
    text = page.read_text()
    return [{"code": m.group(2), "line": text.count("\n", 0, m.start(2)),
             "gpu": "gpu" in m.group(1).split()} for m in FENCE.finditer(text)]


@functools.lru_cache(maxsize=1)
def cuda_unavailable() -> str:
    """Why CUDA cannot run here ("" when it can), asked in a subprocess (numba.cuda stays out of this one)."""
    code = ("from bitnet.backend import cuda_module, CudaUnavailableError\n"
            "try:\n    cuda_module()\nexcept CudaUnavailableError as e:\n    print(e)\n")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=300)
    return res.stdout.strip() or (res.stderr.strip()[-300:] if res.returncode else "")


def _run(page: Path, chosen: list[dict], tmp_path: Path, data_dir: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    env.update(BITNET_DATA=str(data_dir), XDG_CACHE_HOME=str(tmp_path / "cache"))
    job = {"repo": str(REPO), "page": str(page.relative_to(REPO)), "blocks": chosen}
    res = subprocess.run([sys.executable, "-c", RUNNER], input=json.dumps(job), cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=900)
    if res.returncode != 0:
        pytest.fail(f"{job['page']}: a documentation snippet failed\n{res.stdout[-3000:]}\n{res.stderr[-6000:]}",
                    pytrace=False)
    return res.stdout


PAGES_WITH_CODE = [p for p in PAGES if blocks(p)]
IDS = [str(p.relative_to(REPO)) for p in PAGES_WITH_CODE]


def test_the_pages_have_runnable_blocks():
    names = {p.name for p in PAGES_WITH_CODE}
    assert {"README.md", "training.md", "packed.md", "gpu.md"} <= names, names
    for page in PAGES:  # a misspelt fence would silently drop a block from these tests
        bad = re.findall(r"^```(py|Python|python3)\b", page.read_text(), re.M)
        assert not bad, f"{page.name}: use ```python (or ```python gpu) for code that runs, got {bad}"


@pytest.mark.parametrize("page", PAGES_WITH_CODE, ids=IDS)
def test_cpu_blocks_run(page, tmp_path, data_dir):
    chosen = [b for b in blocks(page) if not b["gpu"]]
    if not chosen:
        pytest.skip(f"{page.name}: every block needs a GPU (test_gpu_blocks_run)")
    print(_run(page, chosen, tmp_path, data_dir))  # each block's time, shown with pytest -s


@pytest.mark.parametrize("page", [p for p in PAGES_WITH_CODE if any(b["gpu"] for b in blocks(p))],
                         ids=[i for i, p in zip(IDS, PAGES_WITH_CODE) if any(b["gpu"] for b in blocks(p))])
def test_gpu_blocks_run(page, tmp_path, data_dir):
    reason = cuda_unavailable()
    if reason:
        pytest.skip(f"{page.name}: its ```python gpu blocks need an NVIDIA GPU; here: {reason[:200]}")
    print(_run(page, blocks(page), tmp_path, data_dir))
