"""Stand-in for mpi4py (rib imports it for multi-process builds; the harness runs one process).

Only the names rib touches at import time exist; any real MPI call fails loudly."""


class _Intracomm:
    def Get_rank(self):
        return 0

    def Get_size(self):
        return 1

    def __getattr__(self, name):
        raise RuntimeError(f"mpi4py stub: MPI.COMM_WORLD.{name} is not available")


class MPI:
    Intracomm = _Intracomm
    COMM_WORLD = _Intracomm()
    IN_PLACE = None
    SUM = None
