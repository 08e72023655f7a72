"""votes_app: counts referendum votes, one Celery task per vote, each counted exactly once."""

from votes_app.celery import app

__all__ = ["app"]
