"""The production profile's PostgreSQL: Feast's SQL registry and MLflow's tracking and registry.

One server, two databases: `<database>` (from FEASTFLOW_POSTGRES_URL) holds Feast's registry
tables and `<database>_mlflow` MLflow's (both define tables such as `projects`/`experiments` and
MLflow migrates its schema with Alembic: kept apart, neither can trip on the other). Both are
reached through SQLAlchemy's `postgresql+psycopg` dialect (psycopg 3).
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

MLFLOW_SUFFIX = "_mlflow"


def sqlalchemy_url(postgres_url: str, database: str | None = None) -> str:
    """`postgres_url` in SQLAlchemy's psycopg form, optionally naming another database."""
    parts = urlsplit(postgres_url)
    if parts.scheme not in ("postgresql", "postgres", "postgresql+psycopg"):
        raise ValueError(f"FEASTFLOW_POSTGRES_URL must start with postgresql://, got "
                         f"{parts.scheme}://")
    name = database or database_name(postgres_url)
    return urlunsplit(("postgresql+psycopg", parts.netloc, f"/{name}", parts.query, ""))


def database_name(postgres_url: str) -> str:
    """The database a URL names (FEASTFLOW_POSTGRES_URL must name one)."""
    name = urlsplit(postgres_url).path.lstrip("/")
    if not name or "/" in name:
        raise ValueError(f"FEASTFLOW_POSTGRES_URL must name a database "
                         f"(postgresql://host:5432/<database>), got {postgres_url!r}")
    return name


def feast_registry_url(postgres_url: str) -> str:
    """Feast's SQL registry `path`."""
    return sqlalchemy_url(postgres_url)


def mlflow_url(postgres_url: str) -> str:
    """MLflow's tracking and registry URI: the `<database>_mlflow` database."""
    return sqlalchemy_url(postgres_url, database_name(postgres_url) + MLFLOW_SUFFIX)


def ensure_databases(postgres_url: str) -> list[str]:
    """Create the profile's two databases where missing (through the server's `postgres`
    database); the names created."""
    import psycopg
    from psycopg import sql

    name = database_name(postgres_url)
    wanted = [name, name + MLFLOW_SUFFIX]
    parts = urlsplit(postgres_url)
    admin = urlunsplit(("postgresql", parts.netloc, "/postgres", parts.query, ""))
    created = []
    try:
        with psycopg.connect(admin, autocommit=True, connect_timeout=5) as connection:
            for database in wanted:
                found = connection.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                                           (database,)).fetchone()
                if found is None:
                    connection.execute(sql.SQL("CREATE DATABASE {}").format(
                        sql.Identifier(database)))
                    created.append(database)
    except psycopg.Error as e:
        raise ConnectionError(f"PostgreSQL at {parts.hostname}:{parts.port or 5432} "
                              f"(FEASTFLOW_POSTGRES_URL): {e}".strip()) from e
    return created


def drop_databases(postgres_url: str) -> None:
    """Drop the profile's two databases (tests clean up after themselves)."""
    import psycopg
    from psycopg import sql

    name = database_name(postgres_url)
    parts = urlsplit(postgres_url)
    admin = urlunsplit(("postgresql", parts.netloc, "/postgres", parts.query, ""))
    with psycopg.connect(admin, autocommit=True, connect_timeout=5) as connection:
        for database in (name, name + MLFLOW_SUFFIX):
            connection.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(database)))
