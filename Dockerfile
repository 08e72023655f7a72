# The votes_app image: workers, beat, Flower and the one-shot migration all run from it.
# Build: docker build -t votes_app . (docker compose builds it as votes_app:latest).
# An exact Python release on an exact Debian: deploy/README.md says when and how to move it.
FROM python:3.11.16-slim-trixie

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# A fixed uid/gid so that volume ownership is the same on every rebuild. Flower keeps its
# state in /data (a volume): a new volume takes the ownership of this directory.
RUN groupadd --system --gid 10001 votes \
    && useradd --system --uid 10001 --gid votes --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin votes \
    && install -d -o votes -g votes /data

WORKDIR /app

# Every runtime dependency, direct and indirect, and the build backend, at the versions and
# with the hashes of requirements.lock (`make lock` writes it from pyproject.toml): pip
# refuses anything unpinned, unhashed or whose file differs. In a layer of its own, so that a
# code change does not reinstall them. The dev extras (pytest, ruff, mypy) stay out.
COPY requirements.lock ./
RUN pip install --require-hashes --requirement requirements.lock \
    && rm requirements.lock

# README.md* : pyproject names it as the readme; the glob keeps the build going without it.
# The migrations ship inside the package; alembic.ini lets `alembic upgrade head` (the
# compose stack's one-shot `migrate`) run from /app.
COPY README.md* alembic.ini ./
COPY votes_app ./votes_app
# A regular install: the runtime package, its migrations and the `votes` command in
# site-packages. votes_tools is not in the build context, so not in the image. Built with
# the locked setuptools (no build isolation: nothing is fetched unhashed).
COPY pyproject.toml ./
RUN pip install --no-deps --no-build-isolation . \
    && rm -rf build votes_app votes_app.egg-info \
    && python -c "import votes_app.migrations, votes_app.cli"

USER votes

# Flower's web UI; the workers' metrics ports are set per service (METRICS_PORT).
EXPOSE 5555

# A worker on every queue, as `make worker`; docker-compose.yml runs one per role.
CMD ["celery", "-A", "votes_app", "worker", "-Q", "votes.validation,votes.aggregation,votes.review", "-l", "INFO"]
