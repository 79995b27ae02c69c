"""bitnet: binary neural networks on NumPy and Numba."""
import os as _os

__version__ = "0.1.0"

# In the source tree, kernels/, models/ and data/ sit beside bitnet/ and are installed as
# bitnet.kernels, bitnet.models and bitnet.data (pyproject's package-dir). When Python runs in
# the repository root this source package shadows an installed copy, so make the same mapping
# here; an installed package has bitnet/kernels and is left alone.
_root = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if not _os.path.isdir(_os.path.join(__path__[0], "kernels")) and _os.path.isfile(
        _os.path.join(_root, "kernels", "__init__.py")):
    __path__.append(_root)

if _os.path.basename(getattr(__import__("sys"), "argv", [""])[0] or "") == "bitnet":
    # The `bitnet` command: a Ctrl-C while these imports run (before bitnet.cli handles it) prints one
    # line, not a traceback; Python then still ends the process by SIGINT (exit status 130).
    import sys as _sys

    def _interrupted(kind, value, tb, _default=_sys.excepthook):
        if issubclass(kind, KeyboardInterrupt):
            _sys.stderr.write("bitnet: interrupted\n")
        else:
            _default(kind, value, tb)
    _sys.excepthook = _interrupted

from bitnet.tensor import Tensor, Parameter, Function, no_grad, enable_grad, is_grad_enabled, tensor  # noqa: F401
from bitnet.factories import arange, ones, ones_like, rand, randn, zeros, zeros_like  # noqa: E402,F401
from bitnet import functional, nn, optim  # noqa: E402,F401
from bitnet import data, models  # noqa: E402,F401  (bitnet.data, bitnet.models: the data/ and models/ folders)
from bitnet.summary import summary  # noqa: E402,F401
from bitnet.backend import CudaUnavailableError, current_device, device  # noqa: E402,F401
from bitnet.packed import pack  # noqa: E402,F401
from bitnet.io import (BitnetFileError, convert, load, load_packed, load_state_dict, load_training_state,  # noqa: E402,F401
                       save, save_state_dict)
from bitnet import callbacks, training  # noqa: E402,F401  (bitnet.callbacks.EarlyStopping, bitnet.training.fit)
from bitnet.training import evaluate, fit  # noqa: E402,F401
from bitnet.history import History  # noqa: E402,F401
