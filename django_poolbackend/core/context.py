"""What the layer that made a pool remembers about it, as named, typed fields.

The core pool carries one :class:`PoolContext` for the Django layer and never
reads it. It used to be a free-form dict, where a misspelt key quietly fell back
to a default; a misspelt field is an ``AttributeError`` here (the class has slots)
and an error for the type checker. Every field is plain data, so the core still
imports nothing from Django.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class PoolContext:
    """The Django layer's facts about one pool, each set once it is known."""

    #: Where the pool connects (vendor, host, port, database, user), for figures
    #: and snapshots; never the password. None until the Django layer sets it.
    identity: dict[str, str] | None = None
    #: The ``OPTIONS`` object the pool's connections were opened with (compared by
    #: identity first, the cheap test on every checkout) and a copy of its value.
    #: Left out of the repr, as OPTIONS can hold secrets (``sslpassword``).
    options_of: object = field(default=None, repr=False)
    options: dict[str, Any] | None = field(default=None, repr=False)
    #: The wrapper attributes a physical connect sets (a server version, a
    #: feature flag), replayed on a wrapper that reuses a pooled connection.
    #: None until the pool's first connection was opened.
    wrapper_state: dict[str, Any] | None = field(default=None, repr=False)
    #: Whether the server sits behind a proxy that pools per transaction, asked
    #: once on the pool's first connection (server-side cursors avoid it then).
    behind_proxy: bool = False
    #: The last ``pooldrain`` generation this pool applied, and the drain file's
    #: modification time (ns) when it was last read, so it is read only on change.
    drain_generation: int = 0
    drain_seen: int | None = None
