"""Fixtures shared by the engine tests."""
from __future__ import annotations

import pytest

from bitnet.ops import conv_chunks


@pytest.fixture
def chunk_calls(monkeypatch):
    """The ``per`` (images a chunk) of every chunked convolution backward that runs: a spy on
    ``bitnet.ops.conv_chunks.backward``; the decision to chunk stays the library's."""
    calls = []
    real = conv_chunks.backward

    def spy(*args, **kwargs):
        calls.append(args[7])
        return real(*args, **kwargs)
    monkeypatch.setattr(conv_chunks, "backward", spy)
    return calls
