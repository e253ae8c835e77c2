# The feastflow image: the runtime pins only (requirements.lock), the package not editable.
# One image for every role: `feastflow serve`, `feastflow stream`, the batch jobs.
FROM python:3.11-slim
WORKDIR /app
RUN pip install --no-cache-dir uv==0.13.8
COPY requirements.lock ./
RUN uv pip install --system --no-cache -r requirements.lock
COPY pyproject.toml README.md ./
COPY feastflow feastflow
COPY pipelines pipelines
COPY registry registry
COPY serving serving
COPY feature_repo feature_repo
RUN uv pip install --system --no-cache --no-deps .
# State (event log, feature tables, served log) lives on a volume shared by every role.
ENV FEASTFLOW_HOME=/var/lib/feastflow FEASTFLOW_FEATURE_REPO=/app/feature_repo
VOLUME /var/lib/feastflow
ENTRYPOINT ["feastflow"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
