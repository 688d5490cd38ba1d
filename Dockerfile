# The tierflow worker and CLI (infra/docker-compose.yml runs it beside Kafka, Redis
# and ClickHouse). Build from the repository root: docker build -t tierflow .
FROM python:3.11-slim
WORKDIR /src
COPY pyproject.toml README.md ./
COPY pipeline pipeline
COPY agents agents
COPY schemas schemas
COPY infra infra
RUN pip install --no-cache-dir . && useradd --create-home --uid 10001 tierflow
USER tierflow
# Kafka jar cache and chDB data when no ClickHouse server is named; mount a volume here.
ENV TIERFLOW_HOME=/home/tierflow/.tierflow
ENTRYPOINT ["tierflow"]
CMD ["worker"]
