"""Serving: the current champion over HTTP, swapped when the registry changes; traffic sampled.

- `model`: `current_champion` (the server's one read of the registry) and `ServedModel` (the
  champion's checked ONNX export in onnxruntime, the packaged preprocessing in front of it)
- `inputs`: a request body checked and turned into the exports' input, or a `BadRequest`
- `batching`: `Batcher`, dynamic batching of concurrent requests into one model call
- `traffic`: `TrafficSampler`, a rotated, bounded sample of what the server was asked
- `app`: the FastAPI application (`/predict`, `/health`, `/model`, `/metrics`) and hot swap

`factory serve` (factory_lib.ops.cli) runs it with uvicorn; docs/serving.md says how.
"""
