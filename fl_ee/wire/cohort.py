"""Cohorts: several clients' messages in one Flower message, and their replies in one reply.

Flower's runtime and Ray pay a fixed cost for every message: the engine hands it to a
worker, Ray ships it to the actor and the reply back, the driver files it. On
cross-device workloads (thousands of clients of tens of samples each) a client's own work
is a few SGD steps, and that fixed cost was a third of each call. :class:`~fl_ee.wire.exchange.Exchange`
therefore puts the first clients of a long queue on a node together (:func:`take`, with
two slots a Ray worker: ``COHORTS_PER_WORKER``):

* :func:`pack` makes one message of several messages already addressed to their clients
  (each with its client's address and state), their records under ``"<i>/"`` prefixes.
  Records the messages share (clients of one depth receive the same model slice) are
  the same objects, and a pickled message holds each object once;
* on the node, :func:`unpack` gives back each client's message, the ClientApp mod
  (:func:`~fl_ee.wire.exchange.as_client`) answers them one after the other, and
  :func:`pack_replies` makes one reply of their replies (an error reply's code and
  reason under ``"<i>/error"``);
* :func:`unpack_replies` gives the driver one reply per client again, each naming its
  client in ``metadata.group_id``; an error reply to the whole cohort (its worker died)
  becomes an error reply for each of its clients.

Each client is computed exactly as on its own; only the number of messages changes.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

from flwr.app import ConfigRecord, Error, Message, RecordDict

COHORT = "cohort"  # ConfigRecord of a cohort message: its clients' ids, in order
ERROR = "error"  # ConfigRecord of a failed client's reply in a cohort reply: its code and reason


def take(queue: list[Message], slots: int, work: Callable[[Message], float]) -> list[Message]:
    """Pop the next cohort off the front of ``queue``: the most messages whose work fits one slot's share.

    A slot's share is the queue's work over ``slots``: cohorts shrink as the queue empties
    (guided self-scheduling), so the last messages of an exchange go out one at a time and
    no worker is left with a long cohort at the end. Always at least one message; with no
    more messages than slots, one each (a round of the reference workload is unchanged).
    """
    share = sum(work(m) for m in queue) / max(1, slots)
    cohort = [queue.pop(0)]
    load = work(cohort[0])
    while queue and load + work(queue[0]) <= share:
        load += work(queue[0])
        cohort.append(queue.pop(0))
    return cohort


def _with(metadata_of: Message, content: RecordDict | Error, group_id: str) -> Message:
    """A message with ``content`` (or an error) and a copy of ``metadata_of``'s metadata naming ``group_id``.

    Flower's ``Message`` takes ready metadata (its runtime's way to rebuild a message), which
    its typed overloads leave out.
    """
    metadata = copy.copy(metadata_of.metadata)
    metadata.group_id = group_id
    return Message(content, metadata=metadata)  # type: ignore[call-overload]


def pack(messages: Sequence[Message]) -> Message:
    """One message carrying ``messages`` (addressed alike, to one node), in order."""
    first = messages[0]
    content = RecordDict({COHORT: ConfigRecord({"clients": [int(m.metadata.group_id) for m in messages]})})
    for i, message in enumerate(messages):
        for key, record in message.content.items():
            content[f"{i}/{key}"] = record
    return _with(first, content, first.metadata.group_id)


def is_cohort(message: Message) -> bool:
    """Whether ``message`` is a cohort (:func:`pack`) or a cohort's reply (:func:`pack_replies`)."""
    return message.has_content() and COHORT in message.content


def _clients(message: Message) -> list[int]:
    return [int(c) for c in message.content.config_records[COHORT]["clients"]]  # type: ignore[union-attr]


def _part(content: RecordDict, i: int) -> RecordDict:
    """The records of member ``i`` of a packed content, without their prefix."""
    prefix = f"{i}/"
    return RecordDict({key.removeprefix(prefix): record for key, record in content.items() if key.startswith(prefix)})


def unpack(cohort: Message) -> list[Message]:
    """The node's side: each client's message of a cohort (:func:`pack`), with the cohort's metadata."""
    return [_with(cohort, _part(cohort.content, i), str(client)) for i, client in enumerate(_clients(cohort))]


def pack_replies(replies: Sequence[Message], cohort: Message) -> Message:
    """The node's side: one reply to ``cohort`` carrying each client's reply, in the cohort's order."""
    content = RecordDict({COHORT: cohort.content[COHORT]})
    for i, answer in enumerate(replies):
        if answer.has_error():
            content[f"{i}/{ERROR}"] = ConfigRecord({"code": answer.error.code, "reason": answer.error.reason or ""})
        else:
            for key, record in answer.content.items():
                content[f"{i}/{key}"] = record
    return Message(content, reply_to=cohort)


def unpack_replies(reply: Message, clients: Sequence[int]) -> list[Message]:
    """The driver's side: one reply per client of a cohort sent to ``clients``, each naming its client.

    An error reply to the whole cohort is each client's error reply.
    """
    if reply.has_error():
        return [_with(reply, Error(code=reply.error.code, reason=reply.error.reason), str(c)) for c in clients]
    replies = []
    for i, client in enumerate(clients):
        part = _part(reply.content, i)
        if ERROR in part:
            failed = part.config_records[ERROR]
            replies.append(_with(reply, Error(code=int(failed["code"]),  # type: ignore[arg-type]
                                              reason=str(failed["reason"])), str(client)))
        else:
            replies.append(_with(reply, part, str(client)))
    return replies
