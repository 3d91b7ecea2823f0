# One image for every Vigil service; docker-compose.yml picks the command.
# Everything (Mosquitto included, started by `vigil broker`) runs as the unprivileged "vigil" user.
FROM debian:12-slim
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python3 python3-venv mosquitto mosquitto-clients ca-certificates \
 && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 vigil \
 && useradd --system --uid 10001 --gid vigil --home-dir /var/lib/vigil --shell /usr/sbin/nologin vigil \
 && mkdir -p /var/lib/vigil/mosquitto /var/lib/vigil/state \
 && chown -R vigil:vigil /var/lib/vigil
WORKDIR /opt/vigil
COPY pyproject.toml README.md constraints.txt ./
COPY vigil ./vigil
COPY broker ./broker
COPY edge ./edge
COPY rules ./rules
COPY alerting ./alerting
COPY storage ./storage
COPY console ./console
COPY simulators ./simulators
COPY scenario ./scenario
# constraints.txt: the exact versions CI tested.
RUN python3 -m venv /opt/venv && /opt/venv/bin/pip install --no-cache-dir -c constraints.txt .
ENV PATH=/opt/venv/bin:$PATH
USER vigil:vigil
VOLUME ["/var/lib/vigil"]
ENTRYPOINT ["vigil"]
