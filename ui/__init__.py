"""The Gradio web UI: one module per tab (``build()`` then ``register()``), assembled in ``ui.app``."""
