"""citechat's own app, as ``citechat serve`` runs it (uvicorn, one process), plus ``GET /bench/queries``: how many
statements and transactions it has sent to the database so far (``queries.py``). Configured by the environment,
like the real server: the benchmark starts it with ``python -m citechat.bench.server --port N``."""

import argparse

from citechat.api.app import create_served_app
from citechat.bench.queries import QueryCounter
from citechat.cli import logging_config


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    counter = QueryCounter.install()
    app = create_served_app()
    app.add_api_route("/bench/queries", counter.snapshot, methods=["GET"], include_in_schema=False)
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        log_config=logging_config("warning"),
        access_log=False,
    )


if __name__ == "__main__":
    main()
