"""Multi-host start-up: `jax.distributed.initialize`, explicit or detected from the cluster.

Every process of a multi-host run calls `initialize` before any other JAX call; afterwards
`jax.devices()` lists the devices of all processes and one mesh spans them
(sharding.py). Each process then feeds only its own rows of every global batch
(`data_shard`): on a pod, input bandwidth scales with the hosts.

    initialize(coordinator="10.0.0.1:1234", num_processes=2, process_id=0)  # explicit
    initialize()   # SLURM, Open MPI, Cloud TPU: JAX reads the cluster's own variables

On CPU the collectives between processes go through gloo (JAX's default for CPU).
See docs/multihost.md for launch recipes.
"""

from __future__ import annotations

import os

import jax

from gemini_jax.config import ConfigError

# Variables that JAX's cluster detection reads (jax._src.clusters): their presence means a
# launcher started several processes, so `initialize()` can find its peers by itself.
_CLUSTER_VARIABLES = (
    "SLURM_JOB_ID",  # SLURM (srun)
    "OMPI_COMM_WORLD_SIZE",  # Open MPI (mpirun)
    "TPU_WORKER_HOSTNAMES",  # Cloud TPU pod slices
    "MEGASCALE_COORDINATOR_ADDRESS",  # multi-slice TPU
)


def cluster_detected(environ: dict[str, str] | None = None) -> bool:
    """Whether a multi-process launcher's environment is present (one-task SLURM jobs and
    single-host TPU VMs count as no cluster: there is nobody to connect to)."""
    env = os.environ if environ is None else environ
    if "SLURM_JOB_ID" in env and int(env.get("SLURM_NTASKS", env.get("SLURM_NPROCS", "1"))) <= 1:
        return any(k in env for k in _CLUSTER_VARIABLES if k != "SLURM_JOB_ID")
    if "OMPI_COMM_WORLD_SIZE" in env and int(env["OMPI_COMM_WORLD_SIZE"]) <= 1:
        return False
    if "TPU_WORKER_HOSTNAMES" in env and "," not in env["TPU_WORKER_HOSTNAMES"]:
        return "MEGASCALE_COORDINATOR_ADDRESS" in env
    return any(k in env for k in _CLUSTER_VARIABLES)


def initialize(*, coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, auto: bool = True) -> bool:
    """Joins the processes of a multi-host run; returns whether JAX is now distributed.

    Explicit: all three of coordinator ("HOST:PORT"), num_processes and process_id. Without
    them, and with `auto`, JAX's own cluster detection runs when `cluster_detected()`;
    otherwise nothing happens (one process, as always).
    """
    given = [coordinator is not None, num_processes is not None, process_id is not None]
    if any(given) and not all(given):
        raise ConfigError("multi-host needs all of --coordinator HOST:PORT, --num-processes N and "
                          "--process-id I (or none of them, to let a SLURM/MPI/TPU launcher decide)")
    if all(given):
        host, sep, port = coordinator.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ConfigError(f"--coordinator must be HOST:PORT, got {coordinator!r}")
        if not (isinstance(num_processes, int) and num_processes >= 1):
            raise ConfigError(f"--num-processes must be a positive integer, got {num_processes!r}")
        if not (isinstance(process_id, int) and 0 <= process_id < num_processes):
            raise ConfigError(f"--process-id must be in 0 .. {num_processes - 1}, got {process_id!r}")
        if num_processes == 1:
            return False
        jax.distributed.initialize(coordinator, num_processes=num_processes, process_id=process_id)
        return True
    if auto and cluster_detected():
        jax.distributed.initialize()
        return jax.process_count() > 1
    return False


def data_shard() -> tuple[int, int]:
    """(index, count) of this process among all: which slice of the records it reads."""
    return jax.process_index(), jax.process_count()
