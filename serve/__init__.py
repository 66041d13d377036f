"""The HTTP service: an OpenAI-compatible API over the engine, with energy reports and Prometheus metrics.

``spikegpt serve`` runs it with uvicorn; ``spikegpt.serve.app:create_app`` is the app factory for other ASGI
servers. Importing this package imports nothing heavy (FastAPI loads with ``spikegpt.serve.app``), so the
``spikegpt`` command stays fast and works without the ``serve`` extra.
"""
