"""The packed convolution kernel is compiled once per machine: a second process loads it from
Numba's on-disk cache (no compilation, the cache folder does not grow), for both vector widths."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# Runs a small packed GEMM (a 1x1 convolution) with the selected kernel and the other width, checks
# the results, and prints the time to the first result and each kernel's cache statistics.
PROBE = """
import json, time
t0 = time.perf_counter()
import numpy as np
from bitnet.kernels import xnor_conv as XC
from bitnet.kernels.bitpack import pack_rows
from bitnet.kernels.bits import xnor_dot_reference
r = np.random.default_rng(0)
a = pack_rows(r.standard_normal((70, 300)).astype(np.float32))
b = pack_rows(r.standard_normal((50, 300)).astype(np.float32))
want = xnor_dot_reference(a, b, 300)
kernels = {"selected": XC.xnor_conv, "other": XC.make_xnor_conv(4 if XC.LANES == 8 else 8)}
first = None
for name, kernel in kernels.items():
    assert np.array_equal(XC.xnor_gemm(a, b, 300, kernel=kernel), want), name
    first = first or time.perf_counter() - t0
print(json.dumps({"first_output_s": first,
                  "stats": {name: {"hits": sum(k.stats.cache_hits.values()),
                                   "misses": sum(k.stats.cache_misses.values())}
                            for name, k in kernels.items()}}))
"""


def _run(cache_dir):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache_dir))
    res = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


def _listing(folder):
    return {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*") if p.is_file()}


def test_second_process_loads_the_packed_kernels_from_the_cache(tmp_path):
    cache = tmp_path / "numba-cache"
    first = _run(cache)
    assert all(s["misses"] == 1 and s["hits"] == 0 for s in first["stats"].values()), first
    files = _listing(cache)
    assert any("xnor_conv" in name for name in files), files
    second = _run(cache)
    assert all(s["hits"] == 1 and s["misses"] == 0 for s in second["stats"].values()), second
    assert _listing(cache) == files  # nothing recompiled, nothing appended
    print(f"time to the first packed result: {first['first_output_s']:.2f} s in a fresh cache, "
          f"{second['first_output_s']:.2f} s in the second process")
