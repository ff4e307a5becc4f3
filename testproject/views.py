"""A few views that exercise the pool the way real pages do."""

import os

from django.db import connections, transaction
from django.http import JsonResponse

import django_poolbackend
from django_poolbackend.aliases import pooled_aliases
from testproject.shop.models import Item

BACKEND_ID_SQL = {"postgresql": "SELECT pg_backend_pid()", "mysql": "SELECT CONNECTION_ID()"}
#: SQLite has no server session to ask about: /one/ runs this instead.
SQLITE_ONE_QUERY = "SELECT 1"
SLEEP_SQL = {"postgresql": "SELECT pg_sleep(%s)", "mysql": "SELECT SLEEP(%s)"}


def _alias(request):
    alias = request.GET.get("alias", "default")
    if alias not in connections:
        raise ValueError(f"unknown alias {alias!r}")
    return alias


def one(request):
    """One query: which server session answered, from which process.

    SQLite has no server session: there ``backend`` is the ``id()`` of the driver
    connection that ran the query, the same from one request to the next while a
    pooled connection serves them.
    """
    connection = connections[_alias(request)]
    with connection.cursor() as cursor:
        if connection.vendor == "sqlite":
            cursor.execute(SQLITE_ONE_QUERY)
            cursor.fetchone()
            backend = id(connection.connection)
        else:
            cursor.execute(BACKEND_ID_SQL[connection.vendor])
            (backend,) = cursor.fetchone()
    return JsonResponse({"pid": os.getpid(), "backend": backend})


def items(request):
    alias = _alias(request)
    rows = list(Item.objects.using(alias).values("id", "name", "stock")[:20])
    return JsonResponse({"pid": os.getpid(), "items": rows})


def transfer(request):
    """A short transaction: move one unit of stock between two items."""
    alias = _alias(request)
    with transaction.atomic(using=alias):
        source, target = Item.objects.using(alias).select_for_update().order_by("id")[:2]
        source.stock -= 1
        target.stock += 1
        source.save(using=alias)
        target.save(using=alias)
    return JsonResponse({"pid": os.getpid(), "moved": 1})


def slow(request):
    """Hold a connection for ?ms= milliseconds (default 200)."""
    connection = connections[_alias(request)]
    seconds = int(request.GET.get("ms", "200")) / 1000
    with connection.cursor() as cursor:
        cursor.execute(SLEEP_SQL[connection.vendor], [seconds])
    return JsonResponse({"pid": os.getpid(), "slept_ms": int(seconds * 1000)})


def leave_open(request, fail=False):
    """Start a transaction and leave it open: the pool must clean up after us.

    With *fail*, a statement fails inside it and the view swallows the error.
    """
    connection = connections[_alias(request)]
    transaction.set_autocommit(False, using=connection.alias)
    with connection.cursor() as cursor:
        cursor.execute(BACKEND_ID_SQL[connection.vendor])
        (backend,) = cursor.fetchone()
        if fail:
            try:
                cursor.execute("SELECT * FROM dpb_no_such_table")
            except Exception:
                pass
    return JsonResponse({"pid": os.getpid(), "backend": backend})


def pool(request):
    """This worker's pool figures, for every pooled alias."""
    return JsonResponse(
        {alias: django_poolbackend.pool_stats(alias) for alias in pooled_aliases()}
    )


def page(request):
    """An HTML page, for the debug toolbar (it needs a </body>): on each ?alias=
    (default: default), ?checkouts= separate checkouts (default 1), each asking
    which server session answered."""
    from django.http import HttpResponse
    from django.utils.html import escape

    checkouts = int(request.GET.get("checkouts", "1"))
    rows = []
    for alias in request.GET.getlist("alias") or ["default"]:
        if alias not in connections:
            raise ValueError(f"unknown alias {alias!r}")
        connection = connections[alias]
        for _ in range(checkouts):
            with connection.cursor() as cursor:
                cursor.execute(BACKEND_ID_SQL[connection.vendor])
                rows.append(f"<li>{escape(alias)}: server session {cursor.fetchone()[0]}</li>")
            connection.close()  # back to the pool: the next query checks out again
    # ?open=PoolPanel: open that toolbar panel once the toolbar is ready, and copy
    # its text into the page (a headless browser's --dump-dom skips shadow DOM).
    opener = _OPEN_PANEL_JS % escape(request.GET["open"]) if "open" in request.GET else ""
    return HttpResponse(
        "<!DOCTYPE html><html><head><title>django-poolbackend</title></head><body>"
        f"<h1>Pooled queries (pid {os.getpid()})</h1><ul>{''.join(rows)}</ul>"
        f"{opener}</body></html>"
    )


_OPEN_PANEL_JS = """<script>
(function open() {
  var host = document.getElementById("djDebugRoot");
  var root = host && (host.shadowRoot || document);
  var link = root && root.querySelector("#djDebugPanelList a.%s");
  if (!window.djdt || !link) { setTimeout(open, 50); return; }
  root.getElementById("djDebug").addEventListener("djdt.panel.render", function (event) {
    var out = document.createElement("pre");
    out.id = "panel-text";
    out.hidden = true;
    out.textContent = root.getElementById(event.detail.panelId).innerText;
    document.body.appendChild(out);
  });
  link.click();
})();
</script>"""
