"""Application services: what the UI, the CLI and the demo Space share above the engine and rag libraries.

Layers run one way: ui/ -> services/ -> engine/ and rag/ -> a small shared core. engine/ and rag/ do not
import each other or this package; the model cache, collection access and job runners that need both live here.
"""
