"""bitnet's files (HDF5, no pickle; docs/file-format.md).

- ``h5``: safe reading (headers checked before values, no links to other files, checksums) and
  durable atomic writing;
- ``config``: a model's architecture as JSON, checked and built again;
- ``limits``: the bytes a file may make bitnet allocate, computed from its config before building;
- ``checkpoint``: ``save`` / ``load`` models and training checkpoints;
- ``training_state``: ``load_training_state`` and ``TrainingState.restore``, every field checked;
- ``state_dict``: weights-only files, ``save_state_dict`` / ``load_state_dict``;
- ``packed``: deployment files at 1 bit per binary weight, ``convert`` / ``load_packed``.
"""
from bitnet.io.checkpoint import (TrainingState, describe, load, load_architecture, load_training_state,  # noqa: F401
                                  save)
from bitnet.io.h5 import BitnetFileError  # noqa: F401
from bitnet.io.packed import convert, load_packed  # noqa: F401
from bitnet.io.state_dict import load_state_dict, save_state_dict  # noqa: F401
