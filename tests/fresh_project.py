"""A project made by ``django-admin startproject``, as a user starts, for tests that
paste settings into it and run ``manage.py`` in a process of its own.

The process gets a small environment of the test's choosing (not the caller's
DJANGO_SETTINGS_MODULE, DATABASE_URL or DB_* variables), so what it prints depends
only on the settings pasted.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import django_poolbackend

#: The directory holding the django_poolbackend under test: the project's processes
#: import it from there (the virtualenv's editable install may point elsewhere).
PACKAGE_ROOT = str(Path(django_poolbackend.__file__).resolve().parent.parent)

#: Seconds a manage.py command may take; a check that connects waits at most 5 s.
TIMEOUT = 120


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


class FreshProject:
    """A copy of a pristine ``startproject`` tree named ``proj``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.settings = root / "proj" / "settings.py"
        self.urls = root / "proj" / "urls.py"

    def paste(self, code: str, into: str = "settings.py") -> None:
        """Append *code* to a module of the project, as a user pastes it."""
        path = self.settings if into == "settings.py" else self.urls
        with path.open("a") as f:
            f.write("\n\n" + code.rstrip("\n") + "\n")

    def manage(self, *args: str, env: dict[str, str] | None = None) -> Result:
        done = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=self.root,
            env={
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "PYTHONPATH": PACKAGE_ROOT,
                "HOME": str(self.root),
                "LANG": "C.UTF-8",
                "PYTHONDONTWRITEBYTECODE": "1",
                **(env or {}),
            },
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        return Result(done.returncode, done.stdout, done.stderr)


def make_pristine(directory: Path) -> Path:
    """Run ``django-admin startproject proj`` (this interpreter's Django) in *directory*."""
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "django", "startproject", "proj", str(directory)],
        check=True,
        capture_output=True,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"},
        timeout=TIMEOUT,
    )
    return directory


def copy_of(pristine: Path, target: Path) -> FreshProject:
    shutil.copytree(pristine, target)
    return FreshProject(target)


NO_ISSUES = "System check identified no issues (0 silenced).\n"
