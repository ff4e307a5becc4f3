"""Every settings snippet of the README and the docs works when pasted into a fresh
``django-admin startproject``.

A snippet is marked in the Markdown source by the line
``<!-- test: paste into settings.py -->`` (or ``urls.py``) right above its python
block; a ``urls.py`` block goes with the settings block before it. Each is pasted
below what ``startproject`` wrote, and ``manage.py check`` must find no issue; a
snippet whose values come from ``DB_*`` environment variables is also checked
against the real PostgreSQL server with ``check --database default``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from django.db import connections

from .conftest import require_module
from .fresh_project import NO_ISSUES, FreshProject, copy_of, make_pristine

# The test databases of both vendors exist for the whole module (the snippets'
# processes connect to them); no test here writes to them.
pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "mysql"])

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MARKER = re.compile(
    r"^<!-- test: paste into (settings\.py|urls\.py) -->\n```python\n(.*?)^```$",
    re.M | re.S,
)


@dataclass
class Snippet:
    page: str
    line: int
    settings: str
    urls: list[str] = field(default_factory=list)

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


def snippets() -> list[Snippet]:
    out: list[Snippet] = []
    for page in PAGES:
        text = page.read_text()
        for match in MARKER.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            target, code = match.group(1), match.group(2)
            if target == "urls.py":
                name = str(page.relative_to(ROOT))
                assert out and out[-1].page == name, f"{name}:{line}: a urls.py block needs a settings one before it"
                out[-1].urls.append(code)
            else:
                out.append(Snippet(str(page.relative_to(ROOT)), line, code))
    return out


SNIPPETS = snippets()


def test_the_pages_that_must_have_marked_snippets_have_them():
    pages = {s.page for s in SNIPPETS}
    assert {"README.md", "docs/quickstart.md", "docs/configuration.md"} <= pages
    # Every python block of the quick start is a settings snippet, and marked.
    quickstart = (ROOT / "docs" / "quickstart.md").read_text()
    assert quickstart.count("```python") == sum(s.page == "docs/quickstart.md" for s in SNIPPETS)


#: A python block may stay unmarked only when it is not a settings file a user
#: pastes: the state before a migration, or the code of another module.
UNMARKED_OK = ("# before\n", "# myproject/")
BLOCK = re.compile(r"^(<!-- test: paste into [a-z.]+ -->\n)?```python\n(.*?)^```$", re.M | re.S)


def test_every_settings_block_is_marked():
    unmarked = [
        f"{page.relative_to(ROOT)}:{page.read_text().count(chr(10), 0, m.start()) + 1}"
        for page in PAGES
        for m in BLOCK.finditer(page.read_text())
        if not m.group(1)
        and "DATABASES" in m.group(2)
        and not m.group(2).startswith(UNMARKED_OK)
    ]
    assert unmarked == []


def test_readme_is_a_front_page():
    """At most 1,200 words, and the two set-up commands come first."""
    text = (ROOT / "README.md").read_text()
    assert len(text.split()) <= 1200
    first_block = text.split("```sh\n", 1)[1].split("```", 1)[0]
    assert [line.split()[:2] for line in first_block.splitlines()] == [
        ["./dev", "demo"],
        ["./dev", "test"],
    ]
    assert text.index("```sh\n./dev demo") < text.index("## ")


def test_the_wheel_named_in_the_install_steps_is_the_one_pip_builds():
    import django_poolbackend

    wheel = f"django_poolbackend-{django_poolbackend.__version__}-py3-none-any.whl"
    for page in (ROOT / "README.md", ROOT / "docs" / "quickstart.md"):
        assert f"dist/{wheel}[postgresql]" in page.read_text(), page.name
    # The wheel's version is the package's own (setuptools reads it from there).
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'version = { attr = "django_poolbackend.__version__" }' in pyproject


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pristine(tmp_path_factory.mktemp("dpb_e_pristine"))


@pytest.fixture(scope="module")
def test_databases(django_db_setup: Any, django_db_blocker: Any) -> dict[str, str]:
    """The names of this run's test databases (of our own, dpb_ prefix)."""
    with django_db_blocker.unblock():
        return {
            "postgresql": connections["default"].settings_dict["NAME"],
            "mysql": connections["mysql"].settings_dict["NAME"],
        }


@pytest.fixture
def project(pristine: Path, tmp_path: Path) -> FreshProject:
    return copy_of(pristine, tmp_path / "project")


def pg_env(test_databases: dict[str, str]) -> dict[str, str]:
    return {"DB_NAME": test_databases["postgresql"], "DB_USER": "postgres"}


@pytest.mark.parametrize("snippet", SNIPPETS, ids=[s.id for s in SNIPPETS])
def test_snippet_pastes_into_a_fresh_startproject(snippet, project, test_databases):
    if "debug_toolbar" in snippet.settings:
        require_module("debug_toolbar", "django-debug-toolbar", "the panel's set-up snippet")
    if "dj_database_url" in snippet.settings:
        require_module("dj_database_url", "dj-database-url", "the DATABASE_URL snippets")
    project.paste(snippet.settings)
    expected = NO_ISSUES
    if '"django.contrib.gis"]' in snippet.settings:
        # Django's own warning about a GDAL older than 3.9 (this machine has 3.6),
        # not the snippet's.
        project.paste('SILENCED_SYSTEM_CHECKS = ["gis.W001"]')
        expected = NO_ISSUES.replace("(0 silenced)", "(1 silenced)")
    for code in snippet.urls:
        project.paste(code, into="urls.py")
    result = project.manage("check")
    assert (result.returncode, result.stdout, result.stderr) == (0, expected, "")
    if 'os.environ.get("DB_NAME"' in snippet.settings:
        # Its defaults are placeholders; pointed at a real server, it connects.
        result = project.manage("check", "--database", "default", env=pg_env(test_databases))
        assert (result.returncode, result.stdout, result.stderr) == (0, NO_ISSUES, "")


def server_allows() -> str:
    """What W002 says about the shared PostgreSQL's limit, as the check words it."""
    with connections["default"].cursor() as cursor:
        cursor.execute(
            "SELECT current_setting('max_connections')::int, "
            "current_setting('superuser_reserved_connections')::int, "
            "coalesce(current_setting('reserved_connections', true), '0')::int"
        )
        max_conn, su_reserved, reserved = cursor.fetchone()
    connections["default"].close()
    how = f"max_connections {max_conn} - superuser_reserved_connections {su_reserved}"
    if reserved:
        how += f" - reserved_connections {reserved}"
    return f"the server allows {max_conn - su_reserved - reserved} ({how})"


def test_quickstart_step_3_prints_what_the_page_shows(project, test_databases):
    page = (ROOT / "docs" / "quickstart.md").read_text()
    (snippet,) = [s for s in SNIPPETS if s.page == "docs/quickstart.md"]
    shown = page.split('"POOL": {"max_size": 30}', 1)[1].split("```\n", 1)[1].split("```", 1)[0]
    # The page's server is a default PostgreSQL 15; put in this server's figures.
    expected = shown.replace(
        "the server allows 97 (max_connections 100 - superuser_reserved_connections 3)",
        server_allows(),
    )
    project.paste(snippet.settings)
    project.paste('DATABASES["default"]["POOL"] = {"max_size": 30}')
    env = {**pg_env(test_databases), "WEB_CONCURRENCY": "4"}
    result = project.manage("check", "--database", "default", env=env)
    assert (result.returncode, result.stdout) == (0, "")
    assert result.stderr == expected


# -- DATABASE_URL: the two-line pattern of docs/configuration.md ------------------------

PROBE = """
import json
from django.db import connection
from django_poolbackend import pool_stats
for _ in range(2):
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        (one,) = cursor.fetchone()
    connection.close()
stats = pool_stats()
settings_dict = connection.settings_dict
print(json.dumps({"engine": settings_dict["ENGINE"], "pool": settings_dict["POOL"],
                  "one": one, "checkouts": stats["checkouts"], "connects": stats["connects"],
                  "max_size": stats["max_size"]}))
"""


def url_snippets() -> Iterator[Snippet]:
    return (s for s in SNIPPETS if s.page == "docs/configuration.md" and "dj_database_url" in s.settings)


@pytest.mark.parametrize(
    ("which", "vendor"),
    [
        # engine= names PostgreSQL: that block is for a PostgreSQL URL only.
        ("engine_argument", "postgresql"),
        ("engine_by_scheme", "postgresql"),
        ("engine_by_scheme", "mysql"),
        ("engine_by_scheme", "sqlite3"),
    ],
)
def test_database_url_pattern(which, vendor, project, test_databases, tmp_path):
    require_module("dj_database_url", "dj-database-url", "the DATABASE_URL snippets")
    fixed, by_scheme = url_snippets()
    snippet = fixed if which == "engine_argument" else by_scheme
    url = {
        "postgresql": f"postgres://postgres@127.0.0.1:5432/{test_databases['postgresql']}",
        "mysql": f"mysql://root@127.0.0.1:3306/{test_databases['mysql']}",
        "sqlite3": f"sqlite:///{tmp_path / 'dpb_e_url.sqlite3'}",
    }[vendor]
    project.paste(snippet.settings)
    env = {"DATABASE_URL": url}
    result = project.manage("check", "--database", "default", env=env)
    assert (result.returncode, result.stdout, result.stderr) == (0, NO_ISSUES, "")
    result = project.manage("shell", "-c", PROBE, env=env)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen == {
        "engine": f"django_poolbackend.{vendor}",
        "pool": {"max_size": 4},
        "one": 1,
        # Two requests, one physical connection: the pool served them.
        "checkouts": 2,
        "connects": 1,
        "max_size": 4,
    }


def test_database_url_without_the_variable_uses_the_default(project):
    require_module("dj_database_url", "dj-database-url", "the DATABASE_URL snippets")
    _, by_scheme = url_snippets()
    project.paste(by_scheme.settings)
    project.paste('print("ENGINE", DATABASES["default"]["ENGINE"], DATABASES["default"]["NAME"])')
    result = project.manage("check")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == (
        f"ENGINE django_poolbackend.sqlite3 {project.root.resolve() / 'db.sqlite3'}"
    )
