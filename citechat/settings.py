"""All configuration in one place: environment variables prefixed ``CITECHAT_`` and an optional ``.env`` file."""

from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    """Settings of one citechat process. Every field is documented in the README's settings table."""

    model_config = SettingsConfigDict(
        env_prefix="CITECHAT_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    database_url: SecretStr | None = Field(
        default=None,
        description="PostgreSQL >= 14 URL (postgresql+asyncpg://...). Unset: an embedded PostgreSQL in data_dir.",
    )
    data_dir: Path = Field(
        default=Path(".citechat"),
        description="Where the embedded PostgreSQL and the generated auth secret live.",
    )
    auth_secret: SecretStr | None = Field(
        default=None,
        description="HS256 secret for bearer tokens. Embedded mode generates one in data_dir when unset.",
    )
    auth_jwks_url: str | None = Field(default=None, description="JWKS URL whose RS256/ES256 keys verify bearer tokens.")
    auth_audience: str | None = Field(default=None, description="When set, tokens must carry this `aud` claim.")
    auth_issuer: str | None = Field(default=None, description="When set, tokens must carry this `iss` claim.")
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated origins allowed to call the API from a browser.",
    )
    db_pool_size: int = Field(default=10, ge=1, description="Database connections kept open per process.")

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value

    @property
    def embedded_database(self) -> bool:
        """True when citechat runs its own PostgreSQL instead of connecting to one."""
        return self.database_url is None
