"""The declarative base every table derives from.

The naming convention gives every index and constraint a stable name, so that Alembic's autogenerate compares
the models with the migrations exactly.
"""

from datetime import UTC, datetime

from sqlalchemy import MetaData
from sqlalchemy.orm import DeclarativeBase

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def utcnow() -> datetime:
    """Timezone-aware now. Rows set it from Python too so that rows written in one transaction still order."""
    return datetime.now(UTC)


def all_tables() -> MetaData:
    """The metadata with every domain's tables registered (imports them for their side effect)."""
    from citechat.auth import models as _auth  # noqa: F401
    from citechat.chat import models as _chat  # noqa: F401
    from citechat.documents import models as _documents  # noqa: F401
    from citechat.ratelimits import models as _ratelimits  # noqa: F401

    return Base.metadata
