"""A rank that raises, dies or hangs ends the whole 2-process run within a bounded time, with a message
naming it, and the last checkpoint stays loadable (bitnet.distributed.faults)."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

import bitnet

from mpi_helpers import REPO


def _checkpoint_loads(path, at_least=1):
    model = bitnet.load(path)
    state = bitnet.load_training_state(path)
    assert state.epoch is not None and state.epoch >= at_least and state.optimizer is not None
    return model, state


def test_a_rank_that_raises_ends_the_run_naming_itself(mpirun, tmp_path):
    res = mpirun.worker("raise", tmp_path, timeout=120)
    assert res.returncode != 0
    assert res.seconds < 60, f"took {res.seconds:.0f} s"
    assert re.search(r"rank 1 of 2 \(pid \d+ on [^)]+\) failed: RuntimeError: injected failure at epoch 2, step 2; "
                     r"aborting all 2 processes", res.stderr), res.stderr[-2000:]
    assert "Traceback" in res.stderr  # the failing rank's traceback comes first
    _checkpoint_loads(tmp_path / "ckpt.h5", 1)  # epoch 1's, written by rank 0 before the failure


def test_a_rank_that_hangs_is_named_after_the_timeout(mpirun, tmp_path):
    """Rank 1 sleeps in epoch 2; rank 0 waits in the gradient allreduce for BITNET_DIST_TIMEOUT = 4 s, asks
    rank 1 for a sign of life (5 s grace), names it and aborts the run."""
    res = mpirun.worker("hang", tmp_path, timeout=120, env={"BITNET_DIST_TIMEOUT": "4"})
    assert res.returncode != 0
    assert res.seconds < 60, f"took {res.seconds:.0f} s"
    pid = re.search(r"rank 1 pid (\d+) stops", res.stdout).group(1)
    assert re.search(rf"rank 0 of 2: the \S.* did not finish within 4 s: rank 1 \(pid {pid} on [^)]+\) does not "
                     "answer", res.stderr), res.stderr[-2000:]  # in the next step's SyncBatchNorm statistics
    _checkpoint_loads(tmp_path / "ckpt.h5", 1)


def _train_and_kill_rank_1(mpirun, tmp_path, data_dir):
    """``mpiexec -n 2 bitnet train ... --save`` killed (SIGKILL) in rank 1 once epoch 1's checkpoint is
    written; returns (seconds from the kill to the end of the run, exit status, output, rank 1's pid)."""
    ckpt = tmp_path / "lenet.h5"
    cmd = mpirun.command([sys.executable, "-m", "bitnet.cli", "train", "--model", "lenet", "--data-dir", data_dir,
                          "--limit-train", "640", "--batch-size", "64", "--epochs", "50", "--save", ckpt])
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=mpirun.env(),
                            cwd=REPO)
    out, err = [], []
    readers = [threading.Thread(target=lambda s=s, o=o: o.extend(s), daemon=True)
               for s, o in ((proc.stdout, out), (proc.stderr, err))]
    for t in readers:
        t.start()
    try:
        deadline = time.monotonic() + 240
        while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert ckpt.exists(), f"no checkpoint after {240} s:\n{''.join(out)}\n{''.join(err)}"
        pid = int(re.search(r"rank 1 pid (\d+) on", "".join(out)).group(1))  # the run's first lines map ranks
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        code = proc.wait(timeout=120)
        seconds = time.monotonic() - killed
    finally:
        if proc.poll() is None:
            proc.kill()
    for t in readers:
        t.join(10)
    return seconds, code, "".join(out) + "".join(err), pid


def test_killed_rank_ends_the_run_and_the_checkpoint_loads(mpirun, tmp_path, data_dir):
    """The launcher notices the dead process and ends the others; its message names the process (pid),
    which the run's first lines map to rank 1."""
    seconds, code, output, pid = _train_and_kill_rank_1(mpirun, tmp_path, data_dir)
    assert code != 0 and seconds < 30, (code, seconds)
    assert str(pid) in output.split(f"rank 1 pid {pid}", 1)[1], output[-2000:]  # named again after the kill
    model, state = _checkpoint_loads(tmp_path / "lenet.h5", 1)
    assert model.num_parameters() > 0


def test_a_vanished_rank_is_named_by_the_others_where_the_launcher_does_not_clean_up(mpirun, tmp_path):
    """Rank 1's process ends with status 0 in epoch 2 under MPICH's mpiexec -disable-auto-cleanup, which then
    leaves rank 0 running (a SIGKILL it still cleans up after, like the test above): rank 0's collective
    notices within about a second that rank 1's process is gone, says so, and aborts the run."""
    if not mpirun.hydra:
        pytest.skip("-disable-auto-cleanup is an option of MPICH's mpiexec (Hydra)")
    res = mpirun.worker("vanish", tmp_path, timeout=120, launcher_options=("-disable-auto-cleanup",))
    assert res.returncode != 0
    assert res.seconds < 60, f"took {res.seconds:.0f} s"
    pid = re.search(r"rank 1 pid (\d+) stops", res.stdout).group(1)
    assert re.search(rf"rank 0 of 2: the \S.* cannot finish: rank 1 \(pid {pid} on [^)]+\) has died \(the process "
                     r"is gone\)", res.stderr), res.stderr[-2000:]
    _checkpoint_loads(tmp_path / "ckpt.h5", 1)
