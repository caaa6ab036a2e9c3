"""Fairness between API keys on the shared task queue.

All jobs share one Celery queue, so without this a key with large jobs fills it with hundreds of
instance batches and another key's small job waits behind all of them. Each message is sent with
a priority from its key's backlog (messages queued but not yet started): a key with nothing
queued gets the top priority, and each doubling of its backlog costs one step (Redis priorities:
0 first, 9 last). A key with a deep backlog still gets every worker that is free, but a key that
arrives with a little work goes ahead of it. The backlog counts live in Redis, shared by the API
and every worker; they expire when a key has been quiet for a while, so a lost message cannot
handicap its key for long.

The server-less broker of the embedded stack has one user and no priorities: nothing is tracked.
"""

from __future__ import annotations

import logging
import math
import uuid
from functools import lru_cache

import redis

from app.config import get_settings

log = logging.getLogger(__name__)

PRIORITY_STEPS = list(range(10))  # the broker's priority levels (kombu Redis: 0 is served first)
_BACKLOG_KEY = "selfinstruct:backlog:{owner}"
_BACKLOG_TTL_S = 900
ANONYMOUS = "anonymous"  # keys off: every job belongs to one owner


def priority_for_backlog(queued: int) -> int:
    """0 for a key with nothing queued, one step per doubling of its backlog, at most 9."""
    if queued <= 0:
        return 0
    return min(PRIORITY_STEPS[-1], 1 + int(math.log2(queued)))


@lru_cache
def _redis(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)


def _client() -> redis.Redis | None:
    url = get_settings().resolved_broker_url
    if not url.startswith(("redis://", "rediss://", "unix://")):
        return None
    return _redis(url)


def _owner_name(owner: uuid.UUID | None) -> str:
    return str(owner) if owner is not None else ANONYMOUS


def claim_priority(owner: uuid.UUID | None) -> int | None:
    """The priority for one more message of `owner`, counted in its backlog; None: no priorities
    on this broker. A Redis hiccup costs fairness, never the message."""
    client = _client()
    if client is None:
        return None
    key = _BACKLOG_KEY.format(owner=_owner_name(owner))
    try:
        pipe = client.pipeline()
        pipe.incr(key)
        pipe.expire(key, _BACKLOG_TTL_S)
        queued_with_this, _ = pipe.execute()
    except redis.RedisError:
        log.warning("fairness: could not count the backlog of %s", key, exc_info=True)
        return PRIORITY_STEPS[len(PRIORITY_STEPS) // 2]
    return priority_for_backlog(int(queued_with_this) - 1)


def message_started(owner: uuid.UUID | None) -> None:
    """A message of `owner` left the queue (a worker started it)."""
    client = _client()
    if client is None:
        return
    key = _BACKLOG_KEY.format(owner=_owner_name(owner))
    try:
        if int(client.decr(key)) < 0:
            client.set(key, 0, ex=_BACKLOG_TTL_S)  # drifted (a counter reset mid-flight)
    except redis.RedisError:
        log.warning("fairness: could not update the backlog of %s", key, exc_info=True)


def backlog(owner: uuid.UUID | None) -> int:
    client = _client()
    if client is None:
        return 0
    value = client.get(_BACKLOG_KEY.format(owner=_owner_name(owner)))
    return max(0, int(value or 0))
