"""Ray: start or join a cluster, place one worker actor per rank, call them, fail fast.

Without an address a local Ray is started with a capped object store and no dashboard; with one
(`--ray-address`, e.g. `10.0.0.1:6379` from `ray start --head`) the driver joins it. Workers are
placed with a placement group of `nnodes x n_workers_per_node` bundles (PACK: fill a node before
the next), and ranks are given out node by node (`ranks_by_node`): Ray does not promise that
bundle indices follow nodes, and a tensor-parallel group (consecutive ranks) must never span two. On CPU a worker asks for one core (less when the cluster has fewer cores than
workers) and runs torch with that many threads; on GPU one GPU each. No `runtime_env`: it costs
seconds per actor; the few env vars the workers need are passed to their constructor: the hub
and cache settings, and every NCCL / gloo network setting of the driver's environment
(`forwarded_env`), so one `export NCCL_SOCKET_IFNAME=...` before `sophiavl train` reaches the
workers on every node (docs/multinode.md).

`WorkerGroup.run` waits on all ranks and, the moment one fails or dies, kills the others (they
would otherwise wait in a collective until its timeout) and raises `WorkerFailure`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from typing import Any

from sophiavl_cli.engine.parallel import OBJECT_STORE_BYTES
from sophiavl_cli.errors import UserError

PLACEMENT_TIMEOUT_S = 60.0
LOCAL_START_ATTEMPTS = 3  # the raylet must come up within Ray's fixed 30 s; busy machines miss that
FORWARDED_ENV = ("SOPHIAVL_HOME", "HF_HOME", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE")
# Collective-communication settings: NCCL's own, torch's NCCL knobs, and the gloo/TensorPipe interface.
FORWARDED_ENV_PREFIXES = (
    "NCCL_",
    "TORCH_NCCL_",
    "GLOO_SOCKET_IFNAME",
    "TP_SOCKET_IFNAME",
    "CUDA_DEVICE_MAX_CONNECTIONS",
)


def forwarded_env(environ: dict[str, str] | os._Environ[str]) -> dict[str, str]:
    """The driver's variables every worker gets: `FORWARDED_ENV` and the collective settings."""
    return {
        key: value
        for key, value in environ.items()
        if key in FORWARDED_ENV or key.startswith(FORWARDED_ENV_PREFIXES)
    }


def ranks_by_node(bundle_nodes: Sequence[str]) -> list[int]:
    """Bundle index of each rank, so that the ranks of one node are consecutive.

    `bundle_nodes[i]` is the node Ray put bundle `i` on. Nodes are taken in the order their first
    bundle appears (bundle 0's node hosts rank 0), bundles within a node in index order.
    """
    order = list(dict.fromkeys(bundle_nodes))
    return sorted(range(len(bundle_nodes)), key=lambda i: (order.index(bundle_nodes[i]), i))


# Ray starts its workers at niceness 15, below the driver and Ray's own daemons. Our workers are
# the job: at 15 every busy process on the node (the driver building prompts, a data loader,
# another tenant) runs first and the ranks' collectives wait on the slowest, starved rank. A
# cluster started with `ray start` keeps Ray's default unless started with
# `RAY_worker_niceness=0` (docs/multinode.md).
LOCAL_SYSTEM_CONFIG = {"worker_niceness": 0}


class WorkerFailure(RuntimeError):
    """A worker raised or died; the message says which rank and what to do."""


def connect(address: str | None, *, num_cpus: int | None = None) -> bool:
    """Join the cluster at `address`, or start a local one. Returns True when we started it."""
    import ray

    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    if ray.is_initialized():
        return False
    if address:
        try:
            ray.init(address=address, include_dashboard=False, logging_level="WARNING")
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise UserError(
                f"--ray-address {address}: cannot join the Ray cluster ({exc}); start it with `ray start --head` "
                "on the head node and pass the address it prints"
            ) from exc
        return False
    for attempt in range(LOCAL_START_ATTEMPTS):
        try:
            ray.init(
                address="local",  # a new cluster, never one a `ray start` on this machine left behind
                num_cpus=num_cpus or os.cpu_count() or 1,
                object_store_memory=OBJECT_STORE_BYTES,
                include_dashboard=False,
                logging_level="WARNING",
                _system_config=LOCAL_SYSTEM_CONFIG,
            )
            return True
        except Exception as exc:  # Ray raises a bare Exception when its raylet is slow to start
            ray.shutdown()
            if "timed out during startup" not in str(exc) or attempt == LOCAL_START_ATTEMPTS - 1:
                raise UserError(
                    f"could not start a local Ray ({_first_line(exc)}); the machine may be overloaded: "
                    "retry, or start one with `ray start --head` and pass --ray-address"
                ) from exc
    return True


def disconnect(started: bool) -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


def worker_resources(device: str, world_size: int) -> tuple[float, float]:
    """(num_cpus, num_gpus) per worker that fit the connected cluster."""
    import ray

    if device == "cuda":
        return 1.0, 1.0
    cpus = float(ray.cluster_resources().get("CPU", 1.0))
    return (1.0 if cpus >= world_size else round(cpus / world_size, 3)), 0.0


class WorkerGroup:
    """`world_size` `TrainWorker` actors placed by one placement group; rank = bundle index."""

    def __init__(
        self, world_size: int, device: str, env: dict[str, str] | None = None, worker_cls: type | None = None
    ) -> None:
        """`worker_cls` is the actor class (default `TrainWorker`; `train-rm` passes `RMWorker`)."""
        import ray
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        from sophiavl_cli.engine.workers.train_worker import TrainWorker

        self.world_size = world_size
        num_cpus, num_gpus = worker_resources(device, world_size)
        bundle: dict[str, float] = {"CPU": num_cpus} | ({"GPU": num_gpus} if num_gpus else {})
        self.placement = placement_group([dict(bundle) for _ in range(world_size)], strategy="PACK")
        ready, _ = ray.wait([self.placement.ready()], timeout=PLACEMENT_TIMEOUT_S)
        if not ready:
            ray.util.remove_placement_group(self.placement)
            have = ray.cluster_resources()
            raise UserError(
                f"the Ray cluster cannot place {world_size} workers x {bundle} (it has {have.get('CPU', 0):g} CPUs, "
                f"{have.get('GPU', 0):g} GPUs); lower trainer.nnodes x trainer.n_workers_per_node or add nodes"
            )
        forwarded = forwarded_env(os.environ) | (env or {})
        table = ray.util.placement_group_table(self.placement)["bundles_to_node_id"]
        self.bundles = ranks_by_node([str(table[i]) for i in range(world_size)])
        remote_cls = ray.remote(worker_cls or TrainWorker)
        self.actors = [
            remote_cls.options(
                num_cpus=num_cpus,
                num_gpus=num_gpus,
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    self.placement, placement_group_bundle_index=bundle
                ),
                max_concurrency=1,
            ).remote(rank, world_size, forwarded, max(1, int(num_cpus)))
            for rank, bundle in enumerate(self.bundles)
        ]

    def call(self, method: str, *args: Any, **kwargs: Any) -> list[Any]:
        """Futures of the same call on every rank."""
        return [getattr(actor, method).remote(*args, **kwargs) for actor in self.actors]

    def call_each(self, method: str, per_rank_args: Sequence[tuple[Any, ...]]) -> list[Any]:
        """Futures of `method(*per_rank_args[rank])` on each rank."""
        return [getattr(a, method).remote(*args) for a, args in zip(self.actors, per_rank_args, strict=True)]

    def run(self, method: str, *args: Any, **kwargs: Any) -> list[Any]:
        """Call on every rank and wait (fail fast)."""
        return self.wait(self.call(method, *args, **kwargs), method)

    def run_each(self, method: str, per_rank_args: Sequence[tuple[Any, ...]]) -> list[Any]:
        return self.wait(self.call_each(method, per_rank_args), method)

    def wait(self, futures: list[Any], what: str) -> list[Any]:
        """Results in rank order; the first failure stops every worker and raises `WorkerFailure`."""
        import ray

        pending = list(futures)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            try:
                ray.get(done[0])
            except ray.exceptions.RayActorError as exc:
                self.kill()
                rank = futures.index(done[0])
                raise WorkerFailure(
                    f"worker rank {rank} died during {what} ({_first_line(exc)}); the run stopped. If it ran out of "
                    "memory, lower worker.actor.micro_batch_size_per_device_for_update / _for_experience or "
                    "data.max_response_length; resume with --resume auto"
                ) from exc
            except ray.exceptions.RayTaskError as exc:
                self.kill()
                rank = futures.index(done[0])
                cause = exc.cause if getattr(exc, "cause", None) is not None else exc
                if isinstance(cause, UserError):
                    raise cause from None
                raise WorkerFailure(f"worker rank {rank} failed during {what}: {_first_line(cause)}") from exc
        return ray.get(futures)

    def shutdown(self, timeout_s: float = 30.0) -> None:
        """Close the process groups (barrier + destroy), then release the actors and the placement."""
        import ray

        try:
            ray.wait(self.call("shutdown"), num_returns=len(self.actors), timeout=timeout_s)
        finally:
            self.kill()

    def kill(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        with contextlib.suppress(Exception):  # already removed
            ray.util.remove_placement_group(self.placement)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    for line in reversed(text):
        if line.strip() and not line.startswith(" "):
            return line.strip()[:500]  # room for a one-line hint naming several recipe keys
    return type(exc).__name__
