"""The shared core: what every layer may use and what imports nothing else of the project.

Settings base (``core.settings``), the data directory (``core.paths``), the job event log and its generic
events (``core.events``), text decoding (``core.text``) and generation settings (``core.generation``).
See ARCHITECTURE.md for the layer picture.
"""
