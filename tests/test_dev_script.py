"""./dev's Debian package step: what it says and does with and without root.

``./dev demo`` and ``./dev test`` need a few Debian packages (the MariaDB client library
to build mysqlclient, and for the tests Chromium, PgBouncer, PostGIS, GDAL and GEOS).
They must say which ones and why before installing anything, need no root when all
are there, and without root stop with the exact command to run. These tests source
``dev`` (it only defines its functions when sourced) and call ``system_packages`` on
its own, as the unprivileged user ``nobody`` when the suite runs as root.

``apt-get``, ``id`` and ``pkg-config`` are replaced by small scripts on PATH where a test
needs a package to look missing or the user to look like root: this is about the
script's messages, not about a database, and a real installation would change the
machine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import ROOT

# A login shell's PATH for an ordinary user: no /sbin, where ldconfig lives.
USER_PATH = "/usr/local/bin:/usr/bin:/bin"


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A directory ``nobody`` can read and write (pytest's tmp_path is private to root),
    holding a copy of ``dev`` and a ``bin`` directory for the stand-in commands."""
    path = Path(tempfile.mkdtemp(prefix="dpb_dev_"))
    try:
        path.chmod(0o777)
        shutil.copy(ROOT / "dev", path / "dev")
        (path / "bin").mkdir(mode=0o755)
        yield path
    finally:
        shutil.rmtree(path)


def stub(workdir: Path, name: str, body: str) -> None:
    script = workdir / "bin" / name
    script.write_text("#!/bin/sh\n" + body + "\n")
    script.chmod(0o755)


def system_packages(workdir: Path, stage: str = "test") -> subprocess.CompletedProcess[str]:
    """``system_packages STAGE`` from a sourced copy of dev, as ``nobody`` if we are
    root, with the stand-ins first on an ordinary user's PATH. The output goes to
    ``out.txt`` as it is written, so that a stand-in apt-get can see what was said
    before it was called."""
    command = f". ./dev && system_packages {stage} >out.txt 2>err.txt"
    prefix: list[str] = []
    if os.geteuid() == 0:
        prefix = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    proc = subprocess.run(
        [*prefix, "/bin/bash", "-c", command],
        cwd=workdir,
        env={"PATH": f"{workdir / 'bin'}:{USER_PATH}", "HOME": str(workdir), "LANG": "C.UTF-8"},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    proc.stdout = (workdir / "out.txt").read_text()
    proc.stderr = (workdir / "err.txt").read_text()
    return proc


def recording_apt_get(workdir: Path, exit_status: int = 0) -> None:
    """An apt-get that records its arguments and what dev had printed so far, and makes
    the noise the real one makes (debconf on stderr, progress on stdout)."""
    stub(
        workdir,
        "apt-get",
        f'echo "$*" >>"{workdir}/apt-get.calls"\n'
        f'cp "{workdir}/out.txt" "{workdir}/seen-by-apt-get.txt"\n'
        "echo 'debconf: delaying package configuration, since apt-utils is not installed' >&2\n"
        "echo 'Setting up libmariadb-dev (1:10.11.6-0+deb12u1) ...'\n"
        f"exit {exit_status}",
    )


def test_no_root_needed_when_every_package_is_there(workdir: Path) -> None:
    """./dev test installs these before pytest starts, so on this machine all are there:
    the step says nothing, calls no apt-get and succeeds without root."""
    recording_apt_get(workdir, exit_status=1)
    proc = system_packages(workdir, "test")
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")
    assert not (workdir / "apt-get.calls").exists()


def test_without_root_a_missing_package_stops_with_the_command_to_run(workdir: Path) -> None:
    recording_apt_get(workdir)
    stub(workdir, "pkg-config", "exit 1")  # no MariaDB client library to be found
    proc = system_packages(workdir, "demo")
    assert proc.returncode == 1
    assert proc.stdout == (
        "\n==> Debian packages needed and missing:\n"
        "    libmariadb-dev: the MariaDB client library mysqlclient is built against\n"
    )
    assert proc.stderr == (
        "\nThis needs root. Install them with:\n"
        "    sudo apt-get update && sudo apt-get install -y libmariadb-dev\n"
        "then run ./dev demo again.\n"
    )
    assert not (workdir / "apt-get.calls").exists()


def test_as_root_it_says_what_and_why_before_apt_get_and_hides_its_noise(
    workdir: Path,
) -> None:
    recording_apt_get(workdir)
    stub(workdir, "pkg-config", "exit 1")
    stub(workdir, "id", "echo 0")  # root, as far as dev can tell
    proc = system_packages(workdir, "demo")
    said = (
        "\n==> Debian packages needed and missing:\n"
        "    libmariadb-dev: the MariaDB client library mysqlclient is built against\n"
        "    installing them (as root): apt-get update && apt-get install -y libmariadb-dev\n"
    )
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, said, "")
    assert (workdir / "seen-by-apt-get.txt").read_text() == said
    assert (workdir / "apt-get.calls").read_text().splitlines() == [
        "update -qq",
        "install -y -qq -o Dpkg::Use-Pty=0 libmariadb-dev",
    ]


def test_a_failed_installation_shows_apt_gets_output(workdir: Path) -> None:
    recording_apt_get(workdir, exit_status=100)
    stub(workdir, "pkg-config", "exit 1")
    stub(workdir, "id", "echo 0")
    proc = system_packages(workdir, "demo")
    assert proc.returncode == 1
    assert proc.stderr == (
        "debconf: delaying package configuration, since apt-utils is not installed\n"
        "Setting up libmariadb-dev (1:10.11.6-0+deb12u1) ...\n"
        "installing libmariadb-dev failed (output above)\n"
    )


def test_run_line_passes_the_lines_expected_skips_and_suffix_to_pytest(workdir: Path) -> None:
    """``run_line`` (one Django line's pytest run) reads the tools the line cannot
    have from the virtualenv's ``.dpb-expected-skips`` (what ``capped_test_packages``
    wrote) and gives them to pytest as DPB_EXPECTED_SKIPS, with the line's own test
    database suffix. A stand-in python records what it was given instead of testing."""
    venv = workdir / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / ".dpb-expected-skips").write_text(
        "django-prometheus\tdjango-prometheus 2.5.0 requires Django<6.1\nother-tool\twhy\n"
    )
    python = venv / "bin" / "python"
    python.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = -c ]; then echo "Python 3.13.0, Django 6.1.3"; exit 0; fi\n'
        'echo "skips=$DPB_EXPECTED_SKIPS suffix=$DPB_TEST_DB_SUFFIX args=$*"\n'
        "exit 3\n"
    )
    python.chmod(0o755)
    proc = subprocess.run(
        ["/bin/bash", "-c", ". ./dev && run_line venv _dj6 line.log -k cap"],
        cwd=workdir,
        env={"PATH": USER_PATH, "HOME": str(workdir), "DPB_TEST_DB_SUFFIX": "_mine"},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 3  # pytest's exit status is the line's
    assert (workdir / "line.log").read_text().splitlines() == [
        "pytest with Python 3.13.0, Django 6.1.3 "
        "(expected skips: django-prometheus,other-tool)",
        "skips=django-prometheus,other-tool suffix=_mine_dj6 "
        "args=-m pytest -p no:cacheprovider -k cap",
    ]
