"""The configured index backend: Ragie when chosen (or when RAGIE_API_KEY is set), else the local index."""

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from citechat.db.statements import Runner
from citechat.retrievers.base import IndexBackend
from citechat.settings import Settings


def index_from_settings(
    settings: Settings, sessions: async_sessionmaker[AsyncSession], statements: Runner
) -> IndexBackend:
    if settings.retrieval_backend == "ragie":
        from citechat.retrievers.ragie import RagieIndex

        return RagieIndex.from_settings(settings)
    from citechat.retrievers.embeddings import embedder_from_settings
    from citechat.retrievers.local import LocalIndex

    return LocalIndex(
        sessions,
        statements,
        embedder_from_settings(settings),
        chunk_size=settings.chunk_size,
        chunk_overlap=settings.chunk_overlap,
    )
