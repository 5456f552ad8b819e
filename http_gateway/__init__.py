"""The HTTP face of the pipeline: the original `/generate` API and an OpenAI-compatible route,
over the bus and the store (never the model server). Build it with `create_app(settings)`."""

from http_gateway.app import create_app

__all__ = ["create_app"]
