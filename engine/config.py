"""Training and generation settings, defined once.

The UI form, the YAML presets and the CLI all read these dataclasses; nothing else states a
default. Cross-field rules live in ``validate`` so a bad combination is refused before a run
starts, with the fix in the message.
"""

from __future__ import annotations

import re
from pathlib import Path

from core.settings import Settings, SettingsError, setting
from engine.hub import HubError, check_model_id
from engine.models import BUNDLED_ID

PRESETS_DIR = Path(__file__).parent / "presets"
#: What a run id looks like (``JobStore`` names runs from their name and a time stamp).
RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
METHODS = ("sft", "dpo", "orpo", "kto")
#: How messages name each method.
METHOD_LABELS = {"sft": "SFT", "dpo": "DPO", "orpo": "ORPO", "kto": "KTO"}
#: Preference methods: they train on pairs (DPO, ORPO) or on answers labelled good/bad (KTO).
PREFERENCE_METHODS = ("dpo", "orpo", "kto")
#: The DPO losses TRL 1.16 offers (``DPOConfig.loss_type``), one at a time.
DPO_LOSS_TYPES = ("sigmoid", "ipo", "robust", "hinge", "exo_pair", "nca_pair", "bco_pair", "sppo_hard", "aot",
                  "aot_unpaired", "apo_zero", "apo_down", "discopop", "sigmoid_norm")


class TrainConfig(Settings):
    """Everything a fine-tuning run needs besides the data file."""

    base_model: str = setting(
        BUNDLED_ID,
        "Model to fine-tune: the bundled SmolLM2 works offline; Hub ids need a GPU Space (and a token if gated).",
        label="Base model",
    )
    method: str = setting(
        "sft",
        "How the model learns. SFT: imitate the answers in your data. DPO: prefer the chosen answer of each "
        "pair over the rejected one. ORPO: SFT and preference in one pass, no reference model. KTO: learn from "
        "answers marked good or bad (no pairs needed).",
        label="Training method", choices=METHODS,
    )
    from_run: str = setting(
        "",
        "Continue a finished run's adapter: training starts from that adapter. DPO/KTO (the usual SFT → DPO path) "
        "use that same adapter, frozen, as the reference; SFT continues it, e.g. after continued pre-training on "
        "your documents. Empty: start from the base model.",
        label="Start from run",
    )
    beta: float = setting(
        0.1,
        "DPO/KTO: how far the model may move from the reference (higher = stay closer). ORPO: weight of the "
        "preference part of the loss.",
        label="Beta", minimum=0.001, maximum=10.0, step=0.01,
    )
    loss_type: str = setting(
        "sigmoid",
        "DPO loss: sigmoid is the original DPO; ipo is more robust to overfitting; robust tolerates some "
        "mislabelled pairs (set label smoothing); apo_zero/apo_down suit pairs whose chosen answers are "
        "better/worse than the model's own; hinge is the SLiC loss.",
        label="DPO loss", choices=DPO_LOSS_TYPES, advanced=True,
    )
    label_smoothing: float = setting(
        0.0, "DPO robust/EXO: the share of pairs you believe are labelled the wrong way round.",
        minimum=0.0, maximum=0.49, step=0.01, advanced=True,
    )
    desirable_weight: float = setting(
        1.0, "KTO: weight of answers marked good; raise it when good answers are rarer than bad ones.",
        minimum=0.01, maximum=100.0, step=0.05, advanced=True,
    )
    undesirable_weight: float = setting(
        1.0, "KTO: weight of answers marked bad; raise it when bad answers are rarer than good ones.",
        minimum=0.01, maximum=100.0, step=0.05, advanced=True,
    )
    quantization: str = setting(
        "4bit",
        "How the frozen base weights are stored. 4bit (QLoRA, NF4) uses the least memory; "
        "8bit and none (16-bit LoRA) are slower to fit but a little more exact.",
        choices=("4bit", "8bit", "none"),
    )
    lora_r: int = setting(16, "LoRA rank: capacity of the adapter. 8–32 is typical; higher learns more, "
                          "uses more memory.", label="LoRA rank", minimum=1, maximum=256, step=1)
    lora_alpha: int = setting(32, "LoRA scaling; usually twice the rank.", label="LoRA alpha",
                              minimum=1, maximum=512, step=1, advanced=True)
    lora_dropout: float = setting(0.05, "Dropout on the adapter during training; helps on small datasets.",
                                  label="LoRA dropout", minimum=0.0, maximum=0.5, step=0.01, advanced=True)
    target_modules: str = setting(
        "all-linear",
        "Which layers get adapters: 'all-linear' (recommended) or a comma-separated list such as q_proj,v_proj.",
        advanced=True,
    )
    learning_rate: float = setting(2e-4, "Step size. 1e-4 to 3e-4 suits LoRA; lower it if the loss jumps around.",
                                   minimum=1e-7, maximum=1e-2)
    num_epochs: float = setting(1.0, "Passes over the training data (ignored when max steps is set).",
                                label="Epochs", minimum=0.01, maximum=100.0, step=0.5)
    max_steps: int = setting(-1, "Stop after this many optimizer steps; -1 trains for the number of epochs.",
                             minimum=-1, maximum=1_000_000, step=1)
    batch_size: int = setting(4, "Examples (or packed sequences) per step on the device. Lower it if you run "
                              "out of memory.", minimum=1, maximum=256, step=1)
    grad_accum: int = setting(2, "Steps whose gradients add up before one update: effective batch = batch size "
                              "× this, without the memory cost.", label="Gradient accumulation",
                              minimum=1, maximum=256, step=1)
    max_length: int = setting(512, "Longest example in tokens; longer ones are cut (the Data tab counts them).",
                              label="Max length (tokens)", minimum=32, maximum=32768, step=32)
    lr_scheduler: str = setting("cosine", "How the learning rate changes over the run.", label="LR schedule",
                                choices=("cosine", "linear", "constant", "constant_with_warmup"), advanced=True)
    warmup_ratio: float = setting(0.03, "Share of steps spent ramping the learning rate up.",
                                  minimum=0.0, maximum=0.5, step=0.01, advanced=True)
    optimizer: str = setting(
        "auto",
        "auto = paged 8-bit AdamW on a GPU (saves memory), AdamW on CPU.",
        choices=("auto", "adamw_torch", "paged_adamw_8bit", "adamw_8bit", "adafactor", "sgd"),
        advanced=True,
    )
    gradient_checkpointing: bool = setting(
        True, "Recompute activations instead of storing them: much less memory, ~20–30% slower.", advanced=True
    )
    packing: bool = setting(
        True,
        "Pack several short examples into each sequence with no padding (padding-free): faster, same loss. "
        "Examples never attend to each other.",
        advanced=True,
    )
    train_on: str = setting(
        "assistant",
        "Which tokens teach the model: only the assistant's replies (recommended) or every token.",
        label="Train on", choices=("assistant", "all"), advanced=True,
    )
    val_fraction: float = setting(0.05, "Share of rows held out to measure eval loss (0 = none).",
                                  label="Validation split", minimum=0.0, maximum=0.5, step=0.01)
    eval_steps: int = setting(0, "Evaluate every N steps; 0 picks about 5 evaluations per run.",
                              minimum=0, maximum=100_000, step=1, advanced=True)
    save_steps: int = setting(20, "Save a resumable checkpoint every N steps.", minimum=1, maximum=100_000,
                              step=1, advanced=True)
    weight_decay: float = setting(0.0, "L2 penalty on the adapter weights.", minimum=0.0, maximum=1.0,
                                  step=0.01, advanced=True)
    max_grad_norm: float = setting(1.0, "Clip gradients above this norm; guards against loss spikes.",
                                   minimum=0.0, maximum=100.0, step=0.1, advanced=True)
    seed: int = setting(42, "Random seed: the same seed, data and settings give the same run.",
                        minimum=0, maximum=2**31 - 1, step=1, advanced=True)
    device: str = setting("auto", "Where to train: auto picks the GPU when there is one.",
                          choices=("auto", "cpu", "cuda"), advanced=True)
    dtype: str = setting("auto", "Compute precision: auto = bf16/fp16 on GPU, fp32 on CPU.",
                         choices=("auto", "float32", "bfloat16", "float16"), advanced=True)

    def validate(self) -> None:
        if self.base_model != BUNDLED_ID:
            try:
                check_model_id(self.base_model)  # a visitor's text must never name a local path
            except HubError as exc:
                raise SettingsError("base_model", str(exc)) from None
        if self.optimizer in ("paged_adamw_8bit", "adamw_8bit") and self.device == "cpu":
            raise SettingsError("optimizer", "8-bit and paged optimizers need a GPU; choose 'auto' or adamw_torch.")
        if self.dtype == "float16" and self.device == "cpu":
            raise SettingsError("dtype", "float16 training is not supported on CPU; choose 'auto' or float32.")
        if self.from_run and not RUN_ID.fullmatch(self.from_run):
            raise SettingsError("from_run", f"{self.from_run[:40]!r} is not a run id; pick a finished run.")
        if self.label_smoothing and self.loss_type not in ("robust", "exo_pair"):
            raise SettingsError("label_smoothing", "only the robust and exo_pair DPO losses use label smoothing; "
                                                   "set it to 0 or choose one of those losses.")
        if not self.target_modules.strip():
            raise SettingsError("target_modules", "name at least one layer, or use 'all-linear'.")

    def target_modules_value(self) -> str | list[str]:
        """PEFT accepts the string 'all-linear' or a list of module names."""
        value = self.target_modules.strip()
        return value if value == "all-linear" else [m.strip() for m in value.split(",") if m.strip()]


def preset_names() -> list[str]:
    """Shipped presets, by file stem (``quick-cpu-demo``...)."""
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def load_preset(name: str) -> TrainConfig:
    path = PRESETS_DIR / f"{name}.yaml"
    if not path.exists():
        raise SettingsError("preset", f"no preset named {name!r}; available: {', '.join(preset_names())}.")
    return TrainConfig.from_yaml(path)
