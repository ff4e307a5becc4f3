"""The pool panel in a real headless Chromium, against testproject's runserver with
DEBUG and the debug toolbar on, on the test databases (PostgreSQL and MariaDB, the
latter through a role with a password that must never show).

``DPB_SAVE_PANEL_SCREENSHOT=1`` also copies the screenshot to ``docs/panel.png``.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import (
    MYSQL_POOL_USER,
    ROOT,
    Server,
    free_port,
    require_file,
    require_module,
    server_env,
    stop,
    wait_listening,
)

CHROMIUM = "/usr/bin/chromium"

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "mysql"])


@pytest.fixture(autouse=True)
def chromium_installed() -> None:
    require_file(CHROMIUM, "chromium", "Debian package chromium; ./dev installs it")


@pytest.fixture
def toolbar_server(mysql_pool_user: None, tmp_path: Path) -> Iterator[Server]:
    require_module("debug_toolbar", "django-debug-toolbar", "the dev extra installs it")
    from django.db import connections

    mysql = connections["mysql"].settings_dict
    user, password = MYSQL_POOL_USER
    env = server_env(
        DJANGO_DEBUG="1",
        DJANGO_DEBUG_TOOLBAR="1",
        DPB_TEST_MYSQL_URL=f"mysql://{user}:{password}@{mysql['HOST']}:{mysql['PORT']}/dpb_suite",
    )
    # The toolbar refuses to run where it believes tests run (pytest's variable).
    env.pop("PYTEST_VERSION", None)
    port = free_port()
    log = tmp_path / "runserver.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "testproject" / "manage.py"),
                "runserver",
                "--noreload",
                f"127.0.0.1:{port}",
            ],
            cwd=ROOT,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    server = Server(f"http://127.0.0.1:{port}", process)
    try:
        wait_listening(process, port, "runserver", log)
        yield server
    finally:
        stop(server)


def chromium(tmp_path: Path, *args: str) -> str:
    profile = tmp_path / "chromium-profile"
    profile.mkdir(exist_ok=True)
    result = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            # Let the toolbar's script fetch and draw the panel before the dump.
            "--virtual-time-budget=15000",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def sessions_on_page(page: str) -> dict[str, set[int]]:
    found: dict[str, set[int]] = {}
    for alias, session in re.findall(r"<li>(\w+): server session (\d+)</li>", page):
        found.setdefault(alias, set()).add(int(session))
    return found


def request_row(content: str, alias: str) -> list[str]:
    """The cells of *alias*'s row in the panel's "This request" table."""
    table = content.split('class="djdt-pool-request"', 1)[1].split("</table>", 1)[0]
    for row in re.findall(r"<tr>(.*?)</tr>", table, re.S):
        cells = [c.strip() for c in re.findall(r"<td>(.*?)</td>", row, re.S)]
        if cells and cells[0] == alias:
            return cells
    raise AssertionError(f"no row for {alias!r} in:\n{table}")


def pool_figure(content: str, alias: str, key: str) -> str:
    """A figure of *alias*'s pool in the panel's "Pools of this process" part."""
    section = re.split(rf"<h4>{re.escape(alias)}(?: \(|</h4>)", content, maxsplit=1)[1]
    table = section.split('class="djdt-pool-snapshot"', 1)[1].split("</table>", 1)[0]
    for row in re.findall(r"<tr>(.*?)</tr>", table, re.S):
        cells = [c.strip() for c in re.findall(r"<td>(.*?)</td>", row, re.S)]
        for name, value in zip(cells[::2], cells[1::2], strict=False):
            if name == key:
                return value
    raise AssertionError(f"no figure {key!r} for {alias!r} in:\n{table}")


def test_panel_in_headless_chromium(toolbar_server: Server, tmp_path: Path):
    query = "/page/?alias=default&alias=mysql&checkouts=2"
    # 1. The first request of a fresh server. runserver's start-up checks may
    # already have borrowed (and given back) a connection: Django 5.2 checks
    # migrations on "default", Django 6 runs the database checks of every alias.
    page = toolbar_server.get(query).decode()
    request_id = re.search(r'data-request-id="([0-9a-f]+)"', page).group(1)
    sessions = sessions_on_page(page)
    assert set(sessions) == {"default", "mysql"}
    assert all(len(ids) == 1 for ids in sessions.values())  # both checkouts, one session

    # The panel's content as the toolbar's JavaScript fetches it, in Chromium.
    url = (
        toolbar_server.url
        + "/__debug__/render_panel/?"
        + urllib.parse.urlencode({"request_id": request_id, "panel_id": "PoolPanel"})
    )
    dom = chromium(tmp_path, "--dump-dom", url)
    payload = json.loads(html.unescape(re.search(r"<pre[^>]*>(.*)</pre>", dom, re.S).group(1)))
    content = payload["content"]
    for alias in ("default", "mysql"):
        (session,) = sessions[alias]
        cells = request_row(content, alias)
        # alias, checkouts, wait, new connections, connect time, pings, returns,
        # resets, discarded, server connection id
        assert cells[1] == "2"
        assert cells[3] in ("0", "1")
        if cells[3] == "1":
            assert cells[4].endswith(" ms") and float(cells[4].split()[0]) > 0
        # One physical connection per alias served the process so far.
        assert pool_figure(content, alias, "connects") == "1"
        assert pool_figure(content, alias, "in_use") == "0"
        assert cells[6] == "2"
        assert cells[9] == str(session)
    assert MYSQL_POOL_USER[1] not in dom

    # 2. A page that opens the panel through the toolbar's own JavaScript: the
    # script copies the drawn panel's text into the page for --dump-dom.
    dom = chromium(tmp_path, "--dump-dom", toolbar_server.url + query + "&open=PoolPanel")
    text = html.unescape(re.search(r'<pre id="panel-text"[^>]*>(.*?)</pre>', dom, re.S).group(1))
    assert "This request" in text and "Pools of this process" in text
    page_sessions = sessions_on_page(dom)
    for alias in ("default", "mysql"):
        (session,) = page_sessions[alias]
        # The warm connection was reused: the same server session as before.
        assert session in sessions[alias]
        line = next(line for line in text.splitlines() if line.startswith(alias + "\t"))
        cells = line.split("\t")
        assert cells[1] == "2" and cells[3] == "0" and cells[9] == str(session)
    assert "reused" in text
    assert "max_size\t4" in text
    assert MYSQL_POOL_USER[1] not in dom

    # 3. The screenshot for the docs.
    shot = tmp_path / "panel.png"
    chromium(
        tmp_path,
        f"--screenshot={shot}",
        "--window-size=1280,900",
        toolbar_server.url + query + "&open=PoolPanel",
    )
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (1280, 900)
    if os.environ.get("DPB_SAVE_PANEL_SCREENSHOT") == "1":
        shutil.copyfile(shot, ROOT / "docs" / "panel.png")
