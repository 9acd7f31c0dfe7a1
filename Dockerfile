# Build stage: compile wheels and install the service into a virtualenv.
FROM python:3.11-slim AS build
WORKDIR /src
# pip and setuptools upgraded: the copies a Python 3.11 venv starts with have known
# vulnerabilities (scripts/audit-deps).
RUN python -m venv /opt/venv && /opt/venv/bin/pip install --no-cache-dir --upgrade pip setuptools
COPY pyproject.toml README.md ./
COPY app ./app
# Only `app` is packaged: the development tooling (devkit/: the stand-in tenant, the embedded
# Postgres, the dev page) is neither copied nor installed, and `python -m app dev` says so.
# With the redis extra, so that REDIS_URL works (without the package it stops start-up).
RUN /opt/venv/bin/pip install --no-cache-dir '.[redis]'

# Final stage: no compilers, a non-root user, the virtualenv and the migrations.
FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /srv --shell /usr/sbin/nologin bff
COPY --from=build /opt/venv /opt/venv
COPY migrations /srv/migrations
ENV PATH=/opt/venv/bin:$PATH \
    MIGRATIONS_DIR=/srv/migrations \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOST=0.0.0.0 \
    PORT=8000
WORKDIR /srv
USER bff
EXPOSE ${PORT}
# Follows PORT (`docker run -e PORT=9000 ...`): the probe reads it from the environment.
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:' + os.environ['PORT'] + '/healthz', timeout=2).status != 200)"]
# The server only, as DATABASE_URL (the application's role): the serving container never
# holds the owner's credentials. Migrations are a one-off run of this image with the owner's
# MIGRATIONS_DATABASE_URL before a release starts:
#   docker run --rm --env-file owner.env IMAGE python -m app migrate
# Stopping may take 20 s (requests in flight, then the last audit and rate-limit writes): give
# the container more than that (`docker run --stop-timeout 30`, Kubernetes'
# terminationGracePeriodSeconds: 30); a Dockerfile cannot set it.
CMD ["python", "-m", "app", "serve"]
