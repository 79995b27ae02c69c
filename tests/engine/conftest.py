"""Fixtures shared by the engine tests."""
from __future__ import annotations

import pytest

from bitnet.ops import conv_chunks, sign_backward


@pytest.fixture
def chunk_calls(monkeypatch):
    """The ``per`` (images a chunk) of every chunked convolution backward that runs: a spy on
    ``bitnet.ops.conv_chunks.backward`` and ``bitnet.ops.sign_backward.backward`` (a binary conv by
table lookup: only its calls of more than one chunk); the decision to chunk stays the library's."""
    calls = []
    real = conv_chunks.backward

    def spy(*args, **kwargs):
        calls.append(args[7])
        return real(*args, **kwargs)
    monkeypatch.setattr(conv_chunks, "backward", spy)
    real_tables = sign_backward.backward

    def spy_tables(*args, **kwargs):  # a binary conv by tables passes the whole batch as one chunk
        if args[7] < args[0].shape[0]:
            calls.append(args[7])
        return real_tables(*args, **kwargs)
    monkeypatch.setattr(sign_backward, "backward", spy_tables)
    return calls
