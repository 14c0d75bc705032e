# The model server image: the same command as `python -m experiments.serve`, TF Serving's layout.
#
#   docker build -t mlsd-jax-serve .
#   docker run -p 8500:8500 -p 8501:8501 -v "$PWD/outputs/tabular/RUN/export:/models/tabular" \
#       -e MODEL_NAME=tabular mlsd-jax-serve [overrides, e.g. workers=2 batching.max_batch_size=32]
#
# As with tensorflow/serving, the model's numbered versions live in $MODEL_BASE_PATH/$MODEL_NAME
# (new versions appearing there are picked up without a restart). deploy/README.md has more.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TF_CPP_MIN_LOG_LEVEL=2

WORKDIR /opt/mlsd_jax
COPY setup.py README.md LICENSE ./
COPY mlsd_jax ./mlsd_jax
COPY experiments ./experiments
COPY configs ./configs
RUN pip install ".[serve]"

# An unprivileged user; the prediction log and the XLA compile cache are its only writes.
RUN useradd --create-home --uid 10001 serve \
    && mkdir -p /models /var/lib/mlsd/predlog /var/cache/mlsd_jax \
    && chown -R serve /var/lib/mlsd /var/cache/mlsd_jax
USER serve
WORKDIR /home/serve

ENV MODEL_NAME=model \
    MODEL_BASE_PATH=/models \
    PREDLOG_DIR=/var/lib/mlsd/predlog \
    MLSD_JAX_CACHE=/var/cache/mlsd_jax

VOLUME ["/models", "/var/lib/mlsd/predlog"]
EXPOSE 8500 8501

HEALTHCHECK --interval=10s --timeout=3s --start-period=180s --retries=3 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8501/v2/health/live', timeout=2)"

# Arguments after the image name are more overrides (rest_port=..., workers=..., log.durable=true).
ENTRYPOINT ["sh", "-c", "exec python -m experiments.serve model_name=\"$MODEL_NAME\" model_base_path=\"$MODEL_BASE_PATH/$MODEL_NAME\" log.dir=\"$PREDLOG_DIR\" \"$@\"", "serve"]
CMD []
