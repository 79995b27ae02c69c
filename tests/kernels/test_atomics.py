"""bitnet.kernels.atomics.fetch_add: every task handed out exactly once across Numba's threads."""
from __future__ import annotations

import numba as nb
import numpy as np

from bitnet.kernels.atomics import fetch_add


@nb.njit(parallel=True)
def _claim_all(n_tasks, n_threads):
    counter = np.zeros(1, np.int64)
    owner = np.full(n_tasks, -1, np.int64)
    claims = np.zeros(n_tasks, np.int64)
    for t in nb.prange(n_threads):
        while True:
            task = fetch_add(counter, 0, 1)
            if task >= n_tasks:
                break
            owner[task] = t
            claims[task] += 1
    return owner, claims, counter


def test_every_task_is_claimed_once():
    owner, claims, final = _claim_all(100_000, 4)
    assert np.all(claims == 1) and np.all(owner >= 0)
    assert final[0] == 100_000 + 4  # plus one last, failed claim per prange iteration


def test_fetch_add_returns_the_previous_value():
    @nb.njit
    def two(a):
        return fetch_add(a, 1, 5), fetch_add(a, 1, -2)
    a = np.array([0, 10], np.int64)
    assert two(a) == (10, 15) and a[1] == 13
