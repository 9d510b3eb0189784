# syntax=docker/dockerfile:1
# A test-only trainer image: expiry-client and examples/stuck_trainer.py (its fourth step hangs), for the
# injected pod that tests/images runs from real image root filesystems. Built by scripts/build-images.
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG PIP_CERT
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
RUN python -m venv /opt/trainer
COPY client /src/client
RUN /opt/trainer/bin/pip install --no-deps /src/client

FROM ${PYTHON_IMAGE}
COPY --from=build /opt/trainer /opt/trainer
COPY examples/stuck_trainer.py /app/train.py
ENV PATH=/opt/trainer/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
USER 1000:1000
CMD ["python", "/app/train.py"]
