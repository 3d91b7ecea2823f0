# One image for every Vigil service; docker-compose.yml picks the command.
FROM debian:12-slim
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python3 python3-venv mosquitto mosquitto-clients ca-certificates \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/vigil
COPY pyproject.toml README.md ./
COPY vigil ./vigil
COPY broker ./broker
COPY edge ./edge
COPY rules ./rules
COPY alerting ./alerting
COPY storage ./storage
COPY simulators ./simulators
RUN python3 -m venv /opt/venv && /opt/venv/bin/pip install --no-cache-dir .
ENV PATH=/opt/venv/bin:$PATH
VOLUME ["/var/lib/vigil"]
ENTRYPOINT ["vigil"]
