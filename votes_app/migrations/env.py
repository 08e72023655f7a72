"""Alembic environment: migrates the database named by the application's own settings."""

from __future__ import annotations

from logging.config import fileConfig

import sqlalchemy as sa
from alembic import context

from votes_app.config import get_settings
from votes_app.models import Base

config = context.config
# `alembic` on the command line reads its logging from alembic.ini; a configuration made in
# code (`alembic_config()`) has no file and leaves the caller's logging alone.
if config.config_file_name is not None:
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata


def database_url() -> str:
    # A caller (the test suite, `votes demo`) may hand over its own URL; otherwise the
    # URL comes from DATABASE_URL, as for the application.
    url = config.attributes.get("database_url")
    return str(url) if url else get_settings().database_url.get_secret_value()


def run_migrations_offline() -> None:
    context.configure(url=database_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = sa.create_engine(database_url(), poolclass=sa.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
