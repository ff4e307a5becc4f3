"""The public path of the debug-toolbar panel: ``django_poolbackend.panels.PoolPanel``.

``DEBUG_TOOLBAR_PANELS`` names the panel by this path, so it stays; the panel
itself lives in :mod:`django_poolbackend.toolbar.panel`, next to the recorder it
reads. Importing this module needs django-debug-toolbar installed, and says how to
install it when it is not.
"""

from __future__ import annotations

from .toolbar.panel import PoolPanel

__all__ = ["PoolPanel"]
