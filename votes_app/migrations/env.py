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
    # A caller (the test suite) may hand over its own URL; otherwise the
    # URL is OWNER_DATABASE_URL: the owner's role makes the schema and the app's grants.
    url = config.attributes.get("database_url")
    return str(url) if url else get_settings().owner_database_url.get_secret_value()


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
            set_role_passwords(connection)
    engine.dispose()


def set_role_passwords(connection: sa.Connection) -> None:
    """Give the roles the migrations made their passwords, once they exist: the application's
    from APP_DATABASE_PASSWORD, the reader's from READER_DATABASE_PASSWORD."""
    settings = get_settings()
    for role, password in (
        ("votes_app", settings.app_database_password),
        ("votes_reader", settings.reader_database_password),
    ):
        exists = connection.scalar(
            sa.text("SELECT 1 FROM pg_roles WHERE rolname = :role"), {"role": role}
        )
        if password is not None and exists:
            # psycopg2 quotes the value into the statement: ALTER ROLE takes no bound parameters.
            connection.exec_driver_sql(
                f"ALTER ROLE {role} PASSWORD %s", (password.get_secret_value(),)
            )


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
