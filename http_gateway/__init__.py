"""The HTTP face of the pipeline: the original `/generate` API, an OpenAI-compatible route and
the jobs API (`/jobs`), over the bus and the store (never the model server).
Build it with `create_app(settings)`."""

from http_gateway.app import create_app

__all__ = ["create_app"]
