"""Ray workers that die are replaced: a lost worker costs the message it held, nothing more.

Flower's Ray backend runs each message on an actor (a Ray worker process) taken from its
pool. When that process dies (killed, out of memory, a crash in native code), ``ray.get``
raises :class:`ray.exceptions.RayActorError` (``ActorDiedError``, ``ActorUnavailableError``);
Flower logs the traceback, answers the message with an error, and puts the dead actor
back in the pool, where every later message it is given fails the same way.

:class:`HealingRayBackend` is Flower's ``RayBackend`` with a :class:`HealingActorPool`:
the pool kills the lost actor for good, starts a fresh one in its place, and answers the
message it held with an error reply (:func:`~fl_ee.federation.faults.worker_lost_reason`),
so its client counts as failed in that round, nothing is logged, and later rounds have
the whole pool again. :func:`healing_backend` puts it in place of Flower's backend while
a simulation runs. Losing Ray itself (its raylet) is another matter: Ray ends the
process, and the watchdog says so (:func:`sims.reaper.running`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import ray
from flwr.app import Context, Error, Message
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode
from flwr.server.superlink.fleet.vce.backend import raybackend
from flwr.simulation.ray_transport.ray_actor import BasicActorPool, ClientAppActor
from ray.exceptions import RayActorError

from fl_ee.federation.faults import worker_lost_reason


class HealingActorPool(BasicActorPool):
    """Flower's ``BasicActorPool``, whose lost actors are replaced and whose lost messages get error replies.

    Each future remembers the message and context it runs, so the pool can answer the
    message itself when its actor dies; a run without faults goes exactly as in Flower's pool.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._jobs: dict[Any, tuple[Message, Context]] = {}

    def submit(self, actor_fn: Any, job: tuple[Callable[[], ClientApp], Message, str, Context]) -> Any:
        """Flower's ``submit``, remembering the job's message and context."""
        future = super().submit(actor_fn, job)
        self._jobs[future] = (job[1], job[3])
        return future

    def fetch_result_and_return_actor_to_pool(self, future: Any) -> tuple[Message, Context]:
        """The job's reply; an error reply (its context unchanged) when its actor died, which is then replaced."""
        message, context = self._jobs.pop(future)
        try:
            return super().fetch_result_and_return_actor_to_pool(future)
        except RayActorError as exc:
            actor = self._future_to_actor.pop(future)
            self._replace(actor)
            reason = worker_lost_reason(actor._actor_id.hex(), type(exc).__name__, str(exc))  # type: ignore[attr-defined]
            return Message(Error(code=ErrorCode.UNKNOWN, reason=reason), reply_to=message), context

    def add_actor_back_to_pool(self, future: Any) -> None:
        """Flower's, for a future still in the pool's hands (Flower's backend calls it after any error)."""
        self._jobs.pop(future, None)
        if future in self._future_to_actor:
            super().add_actor_back_to_pool(future)

    def _replace(self, actor: Any) -> None:
        """Kill ``actor`` for good (an unavailable one may come back) and put a fresh one in the pool."""
        with contextlib.suppress(Exception):  # already gone
            ray.kill(actor, no_restart=True)
        self.pool.append(self.create_actor_fn())


class HealingRayBackend(raybackend.RayBackend):
    """Flower's ``RayBackend`` on a :class:`HealingActorPool`."""

    def build(self, app_fn: Callable[[], ClientApp]) -> None:
        """The pool (as many actors as the cluster holds), then the app the actors run, as Flower's ``build``."""
        self.pool = HealingActorPool(actor_type=ClientAppActor, client_resources=self.client_resources,
                                     actor_kwargs=self.actor_kwargs)
        self.pool.add_actors_to_pool(self.pool.actors_capacity)
        self.app_fn = app_fn


@contextlib.contextmanager
def healing_backend() -> Iterator[None]:
    """Within this, Flower's simulation runtime builds a :class:`HealingRayBackend` instead of its ``RayBackend``.

    Flower's runtime takes its backend class from ``raybackend.RayBackend`` each time it
    starts (``start_vce``); there is no other way to give it one.
    """
    flower = raybackend.RayBackend
    raybackend.RayBackend = HealingRayBackend  # type: ignore[misc]
    try:
        yield
    finally:
        raybackend.RayBackend = flower  # type: ignore[misc]
