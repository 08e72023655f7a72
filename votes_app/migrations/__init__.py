"""The schema's migrations (Alembic), shipped inside the package: `alembic_config()` finds them.

`alembic upgrade head` (alembic.ini names `votes_app:migrations`) and `votes health` read the
same scripts, from a checkout or from an installed package alike.
"""

from __future__ import annotations

from alembic.config import Config

SCRIPT_LOCATION = "votes_app:migrations"


def alembic_config(url: str | None = None) -> Config:
    """An Alembic configuration of these migrations, on `url` or else on OWNER_DATABASE_URL."""
    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    config.set_main_option("path_separator", "os")
    if url:
        config.attributes["database_url"] = url
    return config
