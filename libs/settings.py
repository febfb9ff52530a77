"""Typed settings shared by every process. Each service subclasses `ServiceSettings`.

Values come from environment variables (CLOSELOOP_ prefix, plus the conventional
DATABASE_URL and KAFKA_BOOTSTRAP_SERVERS) and fail fast on a bad value.
"""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEV_SECRET = "dev-insecure-secret-change-me"


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CLOSELOOP_", extra="ignore")

    environment: Literal["development", "test", "production"] = "development"
    database_url: str = Field(
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        validation_alias=AliasChoices("DATABASE_URL", "CLOSELOOP_DATABASE_URL"))
    kafka_bootstrap_servers: str = Field(
        default="127.0.0.1:9092",
        validation_alias=AliasChoices("KAFKA_BOOTSTRAP_SERVERS", "CLOSELOOP_KAFKA_BOOTSTRAP_SERVERS"))
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8000, ge=0, le=65535)
    db_pool_min: int = Field(default=1, ge=0)
    db_pool_max: int = Field(default=10, ge=1)
    secret_key: str = DEV_SECRET
    log_level: str = "INFO"

    # Kafka consumer tuning. The defaults suit the embedded Tansu broker, which holds a
    # JoinGroup for session_timeout/2 and never answers a fetch early (see
    # ../shared/notes/infrastructure.md). On a real Kafka cluster raise the session
    # timeout (e.g. 10000/3000) and the fetch wait (500).
    kafka_session_timeout_ms: int = Field(default=3000, ge=1000)
    kafka_heartbeat_interval_ms: int = Field(default=500, ge=100)
    kafka_fetch_max_wait_ms: int = Field(default=10, ge=0)
    kafka_topic_partitions: int = Field(default=6, ge=1)
    # Fetch pacing (libs/messaging/pacing.py): a consumer that saw no record and no event-store commit for
    # kafka_idle_after_ms waits up to kafka_idle_fetch_pause_ms (or the next commit) before each fetch.
    # 0 turns pacing off (on a real Kafka, which answers fetches early, raise the fetch wait instead).
    kafka_idle_after_ms: int = Field(default=1000, ge=0)
    kafka_idle_fetch_pause_ms: int = Field(default=250, ge=0)
    # How often every Kafka client of a service refreshes its metadata even without an error. aiokafka's
    # default is 5 minutes: a consumer whose topic was deleted and created again with another partition count
    # (the relay's repair after a broker loss) kept fetching the partitions it had and did not rejoin for that
    # long, so the new partitions went unread (libs/messaging/positions.py).
    kafka_metadata_max_age_ms: int = Field(default=5000, ge=500)
    instance_prefix: str = Field(
        default="", description="prefix of consumer group ids and timer owners, so that several independent "
                                "deployments (or test stacks) can share one Kafka and one PostgreSQL, e.g. 'staging-'")
    kafka_replication_factor: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _no_default_secret_outside_development(self) -> ServiceSettings:
        # The secret keys the access tokens' hashes (libs/auth/tokens.py): a known one would let
        # anyone who reads the token table test guesses offline. Only development may use it.
        if self.environment != "development" and self.secret_key == DEV_SECRET:
            raise ValueError(f"CLOSELOOP_SECRET_KEY must be set in {self.environment} (the default secret is "
                             "refused outside development)")
        if self.environment != "development" and len(self.secret_key) < 16:
            raise ValueError("CLOSELOOP_SECRET_KEY must be at least 16 characters outside development")
        return self
