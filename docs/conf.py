"""Sphinx configuration: ``sphinx-build -W --keep-going -b html docs docs/_build/html``.

The pages are Markdown (MyST), so they also read well on a code host or in an
editor. ``./dev test`` builds them with warnings as errors.
"""

import re
from pathlib import Path

_init = Path(__file__).resolve().parent.parent / "django_poolbackend" / "__init__.py"
# Read, not imported: building the docs needs neither Django nor a database driver.
release = re.search(r'^__version__ = "([^"]+)"', _init.read_text(), re.M).group(1)
version = release

project = "django-poolbackend"
author = "django-poolbackend developers"
copyright = "django-poolbackend developers"

extensions = ["myst_parser"]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]

# "#some-heading" links between pages, as on a code host.
myst_heading_anchors = 3

html_theme = "furo"
html_title = f"django-poolbackend {release}"

# Code blocks without a language are terminal output and diagrams: no colouring.
highlight_language = "text"
