"""The vargen web app: a baseline and an accelerated sampler side by side (``vargen app``; ``pip install
'vargen[app]'``).

``vargen.app.compare`` and ``vargen.app.render`` hold the request logic and the pictures and import no gradio;
``build_app`` and ``serve`` (in ``vargen.app.ui``) do, on first use::

    from vargen.app import build_app
    build_app({"tiny": pipeline}).launch()
"""
from __future__ import annotations

__all__ = ["build_app", "serve"]


def __getattr__(name: str):
    if name in __all__:
        from . import ui

        return getattr(ui, name)
    raise AttributeError(f"module 'vargen.app' has no attribute {name!r}")
