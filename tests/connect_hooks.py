"""``POOL["connect_params"]`` hooks that subprocess tests name by dotted path."""

from __future__ import annotations

from typing import Any

#: The MySQL test account's password (conftest.MYSQL_POOL_USER); kept out of
#: the settings so that this hook is the only way in, as with short-lived tokens.
POOL_USER_PASSWORD = "dpb_pool_pw"


def pool_user_password(alias: str, params: dict[str, Any]) -> dict[str, Any]:
    return {**params, "password": POOL_USER_PASSWORD}
