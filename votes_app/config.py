"""Settings: every knob of votes_app, read once from the environment (and `.env`)."""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated, Literal, Self
from urllib.parse import unquote, urlsplit

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from votes_app import placeholders

# Votes a producer of this project (`votes submit --file`, the demo, the benchmark) keeps in
# flight before it waits for the broker's confirms. One confirm round trip per message caps
# a producer at what the broker's fsync latency allows; with a window the broker confirms
# many messages with one `basic.ack multiple` (RabbitMQ's "publish in batches, then wait").
PUBLISH_WINDOW = 100
# How long a grouping producer (`VotePublisher(max_batch=...)`) lets a vote wait for others to
# fill its message. At 2,500 votes/s offered, 5 ms made messages of 5 votes and p95 publish →
# audited 571 ms; 20 ms, messages of 15 and 189 ms (`votes bench --quick`, docs/PERFORMANCE.md).
BULK_LINGER_MS = 20.0


class Settings(BaseSettings):
    """Configuration with defaults that work on a developer machine.

    Every field is read from the environment variable of the same name in upper case
    (`DATABASE_URL`, `FLUSH_INTERVAL_SECONDS`, ...). `.env.example` lists them all.
    """

    # allow_inf_nan=False: an infinite interval would be accepted, then crash beat.
    # hide_input_in_errors: a refused value may be a URL with its password.
    model_config = SettingsConfigDict(
        env_file=".env",
        extra="ignore",
        frozen=True,
        allow_inf_nan=False,
        hide_input_in_errors=True,
    )

    # Connections. The URLs carry credentials, so they never appear in a repr or a log.
    celery_broker_url: SecretStr = SecretStr("amqp://guest:guest@127.0.0.1:5672//")
    redis_url: SecretStr = SecretStr("redis://127.0.0.1:6379/0")
    # The application's role (`votes_app`, made by the migrations) may add votes and mark
    # them counted, nothing else; the owner's role runs the migrations and the operator's
    # lifecycle commands (votes laws add, close, certify, recount).
    database_url: SecretStr = SecretStr("postgresql+psycopg2://votes_app@127.0.0.1:5432/votes")
    owner_database_url: SecretStr = SecretStr("postgresql+psycopg2://postgres@127.0.0.1:5432/votes")
    # Set, the migrations give the application's role this password (a deployment whose
    # PostgreSQL asks for one); unset or empty, they leave the role's password as it is.
    app_database_password: SecretStr | None = None
    # The read-only role `votes_reader` (results, dashboards): the migrations give it
    # READER_DATABASE_PASSWORD when set; `votes results` connects with READER_DATABASE_URL
    # when set, with DATABASE_URL otherwise (docs/ROLES.md).
    reader_database_url: SecretStr | None = None
    reader_database_password: SecretStr | None = None
    database_pool_size: int = Field(default=5, ge=1)

    # Broker behaviour. Batching needs room: each worker process may hold a full batch
    # unacknowledged while it fills the next.
    worker_prefetch_multiplier: int = Field(default=200, ge=1)
    broker_confirm_publish: bool = True
    # "quorum" declares the work queues as quorum queues (replicated on a RabbitMQ
    # cluster). RabbitMQ refuses to declare an existing queue with another type: drain and
    # delete the queues (or migrate them) before switching.
    queue_type: Literal["classic", "quorum"] = "classic"
    # A message that keeps coming back (its worker dies on it each time) goes to votes.dead.
    max_redeliveries: int = Field(default=10, ge=1)
    # What the broker holds, at most (RabbitMQ policies, votes_app.topology): each work
    # queue refuses new messages past QUEUE_MAX_BYTES (producers get a nack), votes.dead
    # keeps DEAD_LETTER_MAX_BYTES. Size the broker's disk for their sum plus its
    # disk_free_limit (docs/OPERATIONS.md).
    queue_max_bytes: int = Field(default=4 * 2**30, ge=2**20)
    dead_letter_max_bytes: int = Field(default=2**30, ge=2**20)

    # What a producer may send. A message larger than MAX_MESSAGE_BYTES is refused (by
    # RabbitMQ's max_message_size where it is set, by the worker in any case); a task due
    # more than MAX_ETA_SECONDS ahead would sit unacknowledged in a worker's prefetch, and
    # goes to votes.dead instead. Internal tasks (aggregation, flush, review) run only when
    # RabbitMQ vouches (user_id) that one of TRUSTED_PUBLISHERS (comma-separated RabbitMQ
    # users) sent them; empty, the user of CELERY_BROKER_URL alone.
    max_message_bytes: int = Field(default=256 * 1024, ge=4096)
    max_eta_seconds: int = Field(default=900, ge=1)
    trusted_publishers: Annotated[frozenset[str], NoDecode] = frozenset()

    # Pipeline behaviour.
    validate_batch_size: int = Field(default=100, ge=1, le=10_000)
    validate_batch_ms: int = Field(default=50, ge=1)
    # Votes in one `validate_votes` message at most (bulk intake): validated as one batch.
    # 500 votes of about 250 bytes fit well within MAX_MESSAGE_BYTES.
    validate_bulk_max: int = Field(default=500, ge=1, le=10_000)
    flush_interval_seconds: float = Field(default=1.0, gt=0)
    # How long Redis keeps a claim whose vote was never recorded (its worker died), and
    # the marks that count each duplicate message once: far longer than any redelivery.
    claim_ttl_seconds: int = Field(default=86_400, ge=60)
    # What producers can make one by one, per hour (docs/HOSTILE_INPUT.md, "Bounds"): the
    # refusals of each verdict reviewed one by one (a row, a mark), past which they are
    # counted in one row per verdict and hour; dead-letter reasons kept for `votes dead list`,
    # past which it infers them.
    review_quota_per_hour: int = Field(default=1_000, ge=1)
    dead_reasons_per_hour: int = Field(default=1_000, ge=0)
    max_clock_skew_seconds: int = Field(default=300, ge=0)
    retry_backoff_max_seconds: int = Field(default=60, ge=1)
    max_retries: int = Field(default=25, ge=0)
    roll_missing_retry_seconds: float = Field(default=5.0, gt=0)

    # Per-choice series (votes_aggregated_total, current_vote_totals) move the moment a vote
    # is counted: when one vote arrives alone, they tell its choice to anyone who can also
    # tell when it arrived (a log line, a voter's row). Off: the series do not exist at all.
    export_choice_metrics: bool = False

    # Each worker serves its metrics (all its processes) at http://ADDRESS:PORT/metrics;
    # port 0 turns the server off.
    metrics_address: str = "127.0.0.1"
    metrics_port: int = Field(default=8001, ge=0, le=65535)

    @field_validator(
        "app_database_password", "reader_database_url", "reader_database_password", mode="before"
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("trusted_publishers", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return frozenset(name.strip() for name in value.split(",") if name.strip())
        return value

    @field_validator("*")
    @classmethod
    def _no_placeholder_password(cls, value: object, info: ValidationInfo) -> object:
        # Every secret, URLs included: a `change-me` left from the examples stops the start.
        if isinstance(value, SecretStr) and info.field_name:
            problem = placeholders.secret_problem(info.field_name.upper(), value.get_secret_value())
            if problem:
                raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _own_retries_within_the_eta_bound(self) -> Self:
        # The workers' own retries are delayed tasks too: they must never be refused.
        longest = max(self.retry_backoff_max_seconds, self.roll_missing_retry_seconds)
        if self.max_eta_seconds <= longest:
            raise ValueError(
                f"MAX_ETA_SECONDS ({self.max_eta_seconds}) must exceed the longest retry delay "
                f"(RETRY_BACKOFF_MAX_SECONDS, ROLL_MISSING_RETRY_SECONDS: {longest:g})"
            )
        return self

    @property
    def broker_url(self) -> str:
        return self.celery_broker_url.get_secret_value()

    @property
    def broker_user(self) -> str:
        return unquote(urlsplit(self.broker_url).username or "guest")

    @property
    def trusted_users(self) -> frozenset[str]:
        """RabbitMQ users whose internal tasks workers run."""
        return self.trusted_publishers or frozenset({self.broker_user})


@lru_cache
def get_settings() -> Settings:
    return Settings()
