# A slim CPU image for `factory serve` (docs/serving.md): what the server imports, and no
# torch, Lightning or CUDA (it runs the champion's ONNX export in onnxruntime).
#   docker build -f infra/docker/serve.Dockerfile -t dark-factory-serve .
#   docker run -p 8000:8000 dark-factory-serve factory serve --objective digits --host 0.0.0.0
# The package goes in without its dependencies (which would bring torch); the list below is
# what `factory serve` imports, at the versions of the lock every install uses.
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    METAFLOW_USER=factory

COPY pyproject.toml README.md infra/constraints.txt /build/
COPY factory_lib /build/factory_lib
RUN pip install -c /build/constraints.txt metaflow boto3 pydantic numpy pandas pyyaml optuna \
        onnxruntime fastapi uvicorn prometheus-client \
    && pip install --no-deps /build && rm -rf /build

WORKDIR /srv
EXPOSE 8000
CMD ["factory", "serve", "--objective", "digits", "--host", "0.0.0.0", "--port", "8000"]
