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
RUN /opt/venv/bin/pip install --no-cache-dir .

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
# Migrations run as MIGRATIONS_DATABASE_URL, then the server as DATABASE_URL. To run them
# separately: `docker run IMAGE python -m app migrate`, then `docker run IMAGE python -m app serve`.
CMD ["sh", "-c", "python -m app migrate && exec python -m app serve"]
