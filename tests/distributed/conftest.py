"""The ``mpirun`` fixture: ``mpi_helpers.MPIRun`` on this machine's ``mpiexec``, or a skip saying what is
missing."""
from __future__ import annotations

import pytest

from mpi_helpers import MPIRun, find_mpiexec


@pytest.fixture(scope="session")
def mpirun():
    mpiexec, reason = find_mpiexec()
    if mpiexec is None:
        pytest.skip(reason)
    return MPIRun(mpiexec)
