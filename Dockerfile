# mtcp-appliance: the static-site server on its own user-level TCP/IP stack, as a container.
#   podman build --format docker --network host -t mtcp-appliance .   (OCI drops HEALTHCHECK)
#   podman run -d --cap-add NET_ADMIN --cap-add NET_RAW -p 8080:80 -p 9100:9100 mtcp-appliance
# The appliance takes the container's eth0 and its address (afpacket backend), installs an
# nftables rule so that the kernel leaves port 80 to it, and keeps its management address
# (metrics, /server-status, /healthz) on the kernel's stack at 0.0.0.0:9100. README.md,
# "Deployment", has the details.

# ---------------------------------------------------------------- builder: compiles the wheels
FROM docker.io/library/debian:bookworm-slim AS builder
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev python3 python3-dev python3-venv \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py MANIFEST.in README.md ./
COPY mtcp_core/ mtcp_core/
COPY appliance/ appliance/
COPY http/ http/
COPY metrics/ metrics/
COPY static/ static/
# The project's wheel (with mtcp_core._native compiled for this Debian) and its dependencies'
# wheels; then a pip-less environment for the runtime with exactly those installed.
# Behind a TLS-inspecting proxy, pass its CA bundle as a build secret (never stored in a layer):
#   podman build --secret id=pip_cert,src=/etc/ssl/certs/ca-certificates.crt ...
RUN --mount=type=secret,id=pip_cert \
    if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi \
    && python3 -m venv /opt/build \
    && /opt/build/bin/pip wheel --no-cache-dir --wheel-dir /wheels . \
    && python3 -m venv --without-pip /opt/venv \
    && /opt/build/bin/pip --python /opt/venv/bin/python install --no-cache-dir --no-index \
        --find-links /wheels --no-compile mtcp-appliance \
    && /opt/venv/bin/python -m compileall -q /opt/venv/lib \
    && /opt/venv/bin/python -I -c "import mtcp_core, appliance.http, appliance.metrics"

# ---------------------------------------------------------------- runtime
FROM docker.io/library/debian:bookworm-slim
LABEL org.opencontainers.image.title="mtcp-appliance" \
      org.opencontainers.image.description="Static-site web server on a user-level TCP/IP stack (mTCP style)" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.base.name="docker.io/library/debian:bookworm-slim" \
      io.mtcp-appliance.capabilities="NET_ADMIN NET_RAW" \
      io.mtcp-appliance.ports="80/tcp site (user-level stack), 9100/tcp management (kernel)"
# python3 runs the appliance; nft installs the rule that keeps the kernel off port 80
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 nftables \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb /var/log/apt /var/log/dpkg.log
COPY --from=builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    MTCP_APPLIANCE_STACK=mtcp \
    MTCP_APPLIANCE_BACKEND=afpacket \
    MTCP_APPLIANCE_IFACE=eth0 \
    MTCP_APPLIANCE_IP=auto \
    MTCP_APPLIANCE_PORT=80 \
    MTCP_APPLIANCE_NFT_GUARD=true \
    MTCP_APPLIANCE_METRICS=0.0.0.0:9100 \
    MTCP_APPLIANCE_DRAIN_TIMEOUT=8
EXPOSE 80/tcp 9100/tcp
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=4s --start-period=5s --retries=3 \
    CMD ["/opt/venv/bin/python", "-m", "appliance.healthcheck"]
ENTRYPOINT ["/opt/venv/bin/mtcp-appliance"]
CMD ["serve"]
