"""Shared fixtures: where the real data sets are (../shared/data beside the checkout, or $BITNET_DATA),
and a local HTTP server standing in for the dataset mirrors (tests never reach the internet)."""
from __future__ import annotations

import functools
import http.server
import os
import threading
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir():
    """The folder holding mnist/ and fashion-mnist/, or None if this machine has none."""
    for cand in (os.environ.get("BITNET_DATA"), REPO.parent / "shared" / "data"):
        if cand and (Path(cand) / "mnist" / "train-images-idx3-ubyte.gz").exists():
            return Path(cand)
    return None


_SHARED_DATA = shared_data_dir()  # looked up once, before any test changes BITNET_DATA


@pytest.fixture
def data_dir():
    """The shared data folder (as found when the tests started); skips the test where there is none."""
    d = _SHARED_DATA
    if d is None:
        pytest.skip("MNIST files not found in $BITNET_DATA or ../shared/data")
    return d


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def serve():
    """serve(folder) -> base URL of an HTTP server on 127.0.0.1 for that folder; all servers shut
    down afterwards."""
    servers = []

    def start(folder):
        handler = functools.partial(_QuietHandler, directory=str(folder))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/"

    try:
        yield start
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()
