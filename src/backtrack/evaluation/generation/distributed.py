"""An evaluation spread over Ray: a pool of actors, each holding one model, decodes chunks of
cells; programs run as Ray tasks; the driver alone writes the result directory.

``backtrack eval ... --ray local|auto|ADDRESS --ray-actors N`` runs the same plan as a local
evaluation (same cells, seeds and records, see
:mod:`~backtrack.evaluation.generation.runner`); only where a chunk is decoded changes. Each
actor builds its own :class:`~backtrack.evaluation.generation.sources.CompletionSource` from
the evaluation's settings, so a cell decodes exactly as it would locally (at batch size 1,
token for token).

Faults: an actor that dies mid-chunk (killed, out of memory, its node gone) is restarted by
Ray, and its chunk goes back to the front of the queue; results are matched to cells by key
and the driver writes each cell once, so nothing is lost or duplicated. An interrupted driver
resumes like a local run: the result directory is the only state.

Placement: an actor takes ``cpus_per_actor`` CPUs (its torch threads) and, when the cluster
has at least as many GPUs as actors, one GPU. Sandbox tasks ask for no CPU reservation (they
mostly wait on a child process that the sandbox limits), so they never wait for a decoding
actor to give up its CPUs.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any

from backtrack.evaluation.cells import Generated, WorkItem, cell_key
from backtrack.evaluation.scoring.score import score
from backtrack.evaluation.settings import EvalError, EvalSettings

INSTALL_HINT = "pip install 'backtrack-decoding[ray]'"


def _ray():
    try:
        import ray
    except ImportError as exc:
        raise EvalError(f"--ray needs Ray ({exc}); {INSTALL_HINT}") from exc
    return ray


def connect(address: str, num_cpus: int | None = None):
    """Join or start Ray: ``local`` starts one on this machine, ``auto`` joins the running
    cluster (``ray start --head`` here or elsewhere), anything else is a cluster address."""
    ray = _ray()
    if ray.is_initialized():
        return ray
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
    try:
        if address == "local":
            ray.init(num_cpus=num_cpus, **kwargs)
        else:
            ray.init(address=address, **kwargs)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        raise EvalError(f"cannot reach Ray at {address!r}: {exc}") from exc
    return ray


class _Worker:
    """The actor: one model, one completion source (see the module docstring)."""

    def __init__(self, settings: EvalSettings, threads: int) -> None:
        import torch

        from backtrack.evaluation.generation.sources import CompletionSource, load_model_for

        torch.set_num_threads(threads)  # the CPUs Ray gave this actor, no more
        self.source = CompletionSource(*load_model_for(settings), settings)

    def pid(self) -> int:
        return os.getpid()

    def decode(self, items: list[WorkItem]) -> list[tuple[tuple[str, int, str], Generated]]:
        return [(cell_key(item), gen) for item, gen in self.source.engine(items)]


class RayPool:
    """``actors`` decoding actors on a Ray cluster, and sandbox tasks.

    >>> pool = RayPool(settings, "local", actors=2)          # doctest: +SKIP
    >>> for item, generated in pool.decode(chunks): ...
    """

    def __init__(
        self,
        settings: EvalSettings,
        address: str = "local",
        actors: int = 2,
        cpus_per_actor: float | None = None,
        max_restarts: int = 3,
    ) -> None:
        if actors < 1:
            raise EvalError("--ray-actors must be >= 1")
        ray = connect(address)
        self.ray = ray
        resources = ray.cluster_resources()
        gpus = resources.get("GPU", 0.0)
        if cpus_per_actor is None:
            cpus_per_actor = max(1.0, float(resources.get("CPU", 1.0)) // actors)
        self.cpus_per_actor = cpus_per_actor
        options: dict[str, Any] = {
            "num_cpus": cpus_per_actor,
            "max_restarts": max_restarts,
            "max_task_retries": 0,  # the pool re-queues a lost chunk itself
        }
        if gpus >= actors:
            options["num_gpus"] = 1
        worker = ray.remote(_Worker).options(**options)
        threads = max(1, int(cpus_per_actor))
        self.actors = [worker.remote(settings, threads) for _ in range(actors)]
        # The task's module imports no torch, so sandbox workers start light.
        self._score = ray.remote(num_cpus=0)(score)
        self.requeued = 0  # cells decoded again because their actor died
        self.decoded_chunks = 0

    def pids(self) -> list[int]:
        """The actors' process ids (tests kill one)."""
        return self.ray.get([actor.pid.remote() for actor in self.actors])

    def decode(self, chunks: Iterable[list[WorkItem]]) -> Iterator[tuple[WorkItem, Generated]]:
        """Decode every chunk on some actor; yield ``(item, generated)`` as chunks finish.

        A chunk whose actor died is decoded again (first in line), by the restarted actor or
        another one.
        """
        ray = self.ray
        queue = deque(chunks)
        idle = list(self.actors)
        running: dict[Any, tuple[Any, list[WorkItem]]] = {}

        def feed() -> None:
            while idle and queue:
                actor, chunk = idle.pop(0), queue.popleft()
                running[actor.decode.remote(chunk)] = (actor, chunk)

        while queue or running:
            feed()
            done, _ = ray.wait(list(running), num_returns=1)
            finished = []
            for ref in done:
                actor, chunk = running.pop(ref)
                idle.append(actor)  # a dead one is restarted by Ray; calls wait for that
                try:
                    finished.append((chunk, ray.get(ref)))
                    self.decoded_chunks += 1
                except ray.exceptions.RayActorError:
                    queue.appendleft(chunk)
                    self.requeued += len(chunk)
            feed()  # the actors decode on while the caller handles these results
            for chunk, results in finished:
                by_key = {cell_key(item): item for item in chunk}
                for key, generated in results:
                    yield by_key[key], generated

    def score(self, problem, completion: str, mode: str, sandbox):
        """Run a program as a Ray task; a ``concurrent.futures.Future`` of its result."""
        return self._score.remote(problem, completion, mode, sandbox).future()

    def close(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor)
        self.actors = []
