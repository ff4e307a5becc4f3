"""Async views (ASGI): the ORM through ``sync_to_async`` and the async ORM methods.

Under ASGI, Django runs each request's thread-sensitive sync code (``sync_to_async``,
the async ORM methods, the ``request_started``/``request_finished`` signals) in one
thread of its own, so a request borrows a pooled connection at its first query and
gives it back when ``request_finished`` closes it.
"""

import os

from asgiref.sync import sync_to_async
from django.db import connections
from django.http import JsonResponse

from testproject.shop.models import Item
from testproject.views import BACKEND_ID_SQL, SLEEP_SQL, _alias


def _backend_id(alias: str) -> int:
    connection = connections[alias]
    with connection.cursor() as cursor:
        cursor.execute(BACKEND_ID_SQL[connection.vendor])
        (backend,) = cursor.fetchone()
    return backend


def _sleep(alias: str, seconds: float) -> int:
    """Hold the connection for *seconds* on the server; the session's id."""
    connection = connections[alias]
    with connection.cursor() as cursor:
        cursor.execute(SLEEP_SQL[connection.vendor], [seconds])
        cursor.execute(BACKEND_ID_SQL[connection.vendor])
        (backend,) = cursor.fetchone()
    return backend


async def one(request):
    """One query through sync_to_async: which server session answered, which process."""
    backend = await sync_to_async(_backend_id)(_alias(request))
    return JsonResponse({"pid": os.getpid(), "backend": backend})


async def orm(request):
    """The async ORM: acount(), async iteration, afirst() and aget()."""
    items = Item.objects.using(_alias(request))
    count = await items.acount()
    names = [item.name async for item in items[:20]]
    first = await items.afirst()
    got = None
    if first is not None:
        got = (await items.aget(pk=first.pk)).name
    return JsonResponse({"pid": os.getpid(), "count": count, "names": names, "got": got})


async def slow(request):
    """Hold a connection for ?ms= milliseconds (default 50), so requests overlap."""
    seconds = int(request.GET.get("ms", "50")) / 1000
    backend = await sync_to_async(_sleep)(_alias(request), seconds)
    return JsonResponse({"pid": os.getpid(), "backend": backend, "slept_ms": int(seconds * 1000)})
