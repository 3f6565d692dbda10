# syntax=docker/dockerfile:1
# agentdetect operator image.
#
# Stage 1 builds wheels (ours and every dependency); stage 2 installs them with pip's
# --no-index, so the final image has no compiler, no build backend and no network fetch.
# There is no container engine on this project's build machines: tests/integration/
# test_packaging.py does what this file does (build the wheel, install it into a clean virtual
# environment, run `agentdetect --help` and the operator's start-up against a control plane).

ARG PYTHON_IMAGE=python:3.12.8-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
COPY templates ./templates
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links /wheels agentdetect \
 && useradd --uid 65532 --no-create-home --shell /usr/sbin/nologin agentdetect
USER 65532:65532
# Metrics and health (liveness/readiness) ports; see `agentdetect run --help`.
EXPOSE 8080 8081
ENTRYPOINT ["agentdetect", "run"]
