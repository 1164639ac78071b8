"""The ``citechat`` command: run the service, manage its database, make tokens for local use."""

import asyncio
import copy
import logging.config
from typing import Annotated

import typer

from citechat.settings import Settings

app = typer.Typer(
    help="citechat: chat with your documents, with cited answers.", no_args_is_help=True, add_completion=False
)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
app.add_typer(db_app, name="db")


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes.")] = 1,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
) -> None:
    """Run the API (embedded PostgreSQL unless CITECHAT_DATABASE_URL is set; migrations applied on start)."""
    import uvicorn

    uvicorn.run(
        "citechat.api.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
        log_config=logging_config(log_level),
        proxy_headers=True,
    )


def logging_config(level: str) -> dict:
    """uvicorn's logging, plus citechat's loggers; applied in every worker process."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["formatters"]["plain"] = {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}
    config["handlers"]["plain"] = {"class": "logging.StreamHandler", "formatter": "plain", "stream": "ext://sys.stderr"}
    for name, name_level in [("citechat", level), ("alembic", "warning"), ("pgserver", "warning")]:
        config["loggers"][name] = {"handlers": ["plain"], "level": name_level.upper(), "propagate": False}
    return config


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply every pending migration."""
    from citechat.db.database import open_database
    from citechat.db.migrations import current_revision

    logging.config.dictConfig(logging_config("info"))

    async def upgrade() -> str | None:
        async with open_database(Settings(), migrate=True) as database:
            return await current_revision(database.engine)

    typer.echo(f"database schema at revision {asyncio.run(upgrade())}")


@app.command()
def token(
    user: Annotated[str, typer.Option(help="User id (the `sub` claim).")],
    org: Annotated[list[str], typer.Option(help="Organization id; repeat for several.")],
    ttl: Annotated[str, typer.Option(help="Lifetime, e.g. 30m, 12h, 7d.")] = "1d",
    name: Annotated[str | None, typer.Option(help="Display name.")] = None,
    email: Annotated[str | None, typer.Option(help="E-mail address.")] = None,
) -> None:
    """Print an HS256 bearer token signed with the service's secret, for local use and scripts."""
    from citechat.auth.tokens import auth_secret, issue_token, parse_ttl

    try:
        lifetime = parse_ttl(ttl)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--ttl") from exc
    secret = auth_secret(Settings())
    if secret is None:
        typer.echo("No CITECHAT_AUTH_SECRET is set, and tokens are verified elsewhere (JWKS).", err=True)
        raise typer.Exit(2)
    typer.echo(issue_token(secret, user=user, organizations=org, ttl=lifetime, name=name, email=email))
