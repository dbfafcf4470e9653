"""The Quantization & LoRA lab: the ideas behind QLoRA computed on the user's own model.

Why a package of its own: each idea a course teaches (calibration, NF4, LoRA's low-rank update, the
memory sum) becomes a small pure function here that returns a dataclass of numbers; the Lab tab and
``python -m engine lab`` only format them, so the figures a user sees are the figures the tests check.

- :mod:`engine.lab.quant` — scale, zero point, the integer grid and per-value errors (the calibration playground).
- :mod:`engine.lab.layers` — the loaded model layer by layer: statistics, int8/NF4/FP4 errors, sizes per format.
- :mod:`engine.lab.lora` — exact LoRA parameter counts per module, and the spectrum of a finished run's update.
- :mod:`engine.lab.precision` — the same prompt in full precision and in NF4, with perplexity.
- :mod:`engine.lab.decide` — prompting → RAG → fine-tuning → both, as questions a non-coder can answer.
"""
