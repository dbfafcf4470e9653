"""Training and generation settings, defined once.

The UI form, the YAML presets and the CLI all read these dataclasses; nothing else states a
default. Cross-field rules live in ``validate`` so a bad combination is refused before a run
starts, with the fix in the message.
"""

from __future__ import annotations

import math
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
#: Most training processes one run may use (one per GPU: 8 is the most GPUs a Space or a usual server has).
MAX_PROCESSES = 8
#: Runs shorter than this many steps evaluate only once, at the end (an evaluation per step would dominate them).
EVAL_MIN_STEPS = 10
#: Evaluations during a run at most (plus the one at the end), whatever 'eval_steps' says.
EVAL_MAX_COUNT = 5


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
        "How the model's own weights are stored while the small adapter learns on top of them. 4bit (QLoRA) "
        "squeezes each weight into 4 bits: about a quarter of the memory, slightly less exact. 8bit is in "
        "between; none keeps the weights in full precision (most memory, most exact).",
        choices=("4bit", "8bit", "none"),
    )
    lora_r: int = setting(16, "LoRA trains a small add-on (an adapter) instead of the whole model; the rank is "
                          "its size. 8–32 is typical: higher can learn more but uses more memory and time.",
                          label="LoRA rank", minimum=1, maximum=256, step=1)
    lora_alpha: int = setting(32, "How strongly the adapter's changes count; usually twice the rank.",
                              label="LoRA alpha", minimum=1, maximum=512, step=1, advanced=True)
    lora_dropout: float = setting(0.05, "Randomly switches off part of the adapter at each step so it does not "
                                  "memorise a small dataset; 0 is faster.",
                                  label="LoRA dropout", minimum=0.0, maximum=0.5, step=0.01, advanced=True)
    target_modules: str = setting(
        "all-linear",
        "Which layers get adapters: 'all-linear' (recommended) or a comma-separated list such as q_proj,v_proj.",
        advanced=True,
    )
    learning_rate: float = setting(2e-4, "How big a change each step makes. Too high: the loss jumps around; too "
                                   "low: it barely falls. 1e-4 to 3e-4 (0.0001–0.0003) suits LoRA.",
                                   minimum=1e-7, maximum=1e-2)
    num_epochs: float = setting(1.0, "How many times the model reads all your examples (ignored when max steps "
                                "is set).",
                                label="Epochs", minimum=0.01, maximum=100.0, step=0.5)
    max_steps: int = setting(-1, "Stop after this many steps (one step = one update of the adapter from "
                             "batch size × gradient accumulation examples); -1 trains for the number of epochs.",
                             minimum=-1, maximum=1_000_000, step=1)
    batch_size: int = setting(4, "How many examples (or packed sequences) the model reads at once. Lower it if "
                              "you run out of memory.", minimum=1, maximum=256, step=1)
    grad_accum: int = setting(2, "Read this many batches before each update, adding up what they teach: the "
                              "update sees batch size × this examples without the memory of one big batch.",
                              label="Gradient accumulation", minimum=1, maximum=256, step=1)
    max_length: int = setting(512, "Longest example the model reads, in tokens (a token is about ¾ of a word); "
                              "longer ones are cut, and the Data tab counts how many. Shorter is faster.",
                              label="Max length (tokens)", minimum=32, maximum=32768, step=32)
    lr_scheduler: str = setting("cosine", "How the learning rate changes over the run: cosine and linear lower it "
                                "towards the end so the model settles.", label="LR schedule",
                                choices=("cosine", "linear", "constant", "constant_with_warmup"), advanced=True)
    warmup_ratio: float = setting(0.03, "Share of the first steps in which the learning rate grows from 0, so "
                                  "early steps do not undo what the model knows.",
                                  minimum=0.0, maximum=0.5, step=0.01, advanced=True)
    optimizer: str = setting(
        "auto",
        "The rule that turns what a step learned into a weight change. auto = paged 8-bit AdamW on a GPU "
        "(saves memory), AdamW on CPU.",
        choices=("auto", "adamw_torch", "paged_adamw_8bit", "adamw_8bit", "adafactor", "sgd"),
        advanced=True,
    )
    gradient_checkpointing: bool = setting(
        True, "Saves memory by recomputing intermediate results instead of keeping them: much less memory, "
        "about 20–30% slower. Small models on a CPU do not need it.", advanced=True
    )
    packing: bool = setting(
        True,
        "Put several short examples side by side in one sequence instead of filling the gaps with padding: "
        "faster, same result. The examples never see each other.",
        advanced=True,
    )
    train_on: str = setting(
        "assistant",
        "Which tokens teach the model: only the assistant's replies (recommended) or every token.",
        label="Train on", choices=("assistant", "all"), advanced=True,
    )
    val_fraction: float = setting(0.05, "Share of rows kept out of training to check the model on examples it "
                                  "has not seen (the eval loss); 0 = none. At most 'Max validation rows' are "
                                  "used; the rest train.", label="Validation split", minimum=0.0, maximum=0.5,
                                  step=0.01)
    eval_max_rows: int = setting(64, "At most this many held-out rows are evaluated, so checking the model stays "
                                 "a small part of the run; any further held-out rows train.",
                                 label="Max validation rows", minimum=1, maximum=100_000, step=1, advanced=True)
    eval_steps: int = setting(0, "Check the validation loss every N steps; 0 picks about 5 checks per run. Never "
                              "more than about 5 during a run (plus one at the end), and runs of under "
                              f"{EVAL_MIN_STEPS} steps check only at the end, so evaluating stays a small share "
                              "of the time.", minimum=0, maximum=100_000, step=1, advanced=True)
    save_steps: int = setting(20, "Save a checkpoint every N steps, so a stopped run can continue from there "
                              "(the finished adapter is always saved).", minimum=1, maximum=100_000,
                              step=1, advanced=True)
    weight_decay: float = setting(0.0, "Gently pulls the adapter's weights towards zero to curb memorising; 0 "
                                  "is fine for short runs.", minimum=0.0, maximum=1.0,
                                  step=0.01, advanced=True)
    max_grad_norm: float = setting(1.0, "Caps how big one step's change may be; guards against sudden loss "
                                   "spikes.",
                                   minimum=0.0, maximum=100.0, step=0.1, advanced=True)
    seed: int = setting(42, "Random seed: the same seed, data and settings give the same run.",
                        minimum=0, maximum=2**31 - 1, step=1, advanced=True)
    device: str = setting("auto", "Where to train: auto picks the GPU when there is one.",
                          choices=("auto", "cpu", "cuda"), advanced=True)
    processes: int = setting(
        0,
        "How many processes train together, each on its own GPU with a copy of the adapter (DDP through "
        "Hugging Face accelerate): 0 = one per visible GPU (one on a CPU). Each process reads 'Batch size' "
        "examples, so one step sees batch size × gradient accumulation × processes examples.",
        minimum=0, maximum=MAX_PROCESSES, step=1, advanced=True,
    )
    dtype: str = setting("auto", "Number precision of the computations: auto = 16-bit (bf16/fp16) on a GPU, "
                         "32-bit on a CPU.",
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


#: The preset a new visitor's form starts from, per device (``engine.models.pick_device``): on a CPU the taste
#: run (about 2 minutes with the bundled model), on a GPU the everyday QLoRA recipe.
DEFAULT_PRESETS = {"cpu": "taste-cpu", "cuda": "balanced-gpu-qlora"}


def preset_names(device: str | None = None) -> list[str]:
    """Shipped presets, by file stem (``taste-cpu``...): with a ``device``, its default preset first, then the
    others made for it (``-cpu``/``-gpu`` in the name), then the rest; alphabetical without a device."""
    names = sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))
    if device is None:
        return names
    mine = "-cpu" if device == "cpu" else "-gpu"
    first = DEFAULT_PRESETS.get(device, "")
    return sorted(names, key=lambda name: (name != first, mine not in name, name))


def eval_interval(config: TrainConfig, total_steps: int) -> int:
    """Steps between evaluations, so that evaluating stays a small share of the run's time.

    The setting (0: about ``EVAL_MAX_COUNT`` per run), but never more often than that; a run shorter than
    ``EVAL_MIN_STEPS`` steps gets an interval past its last step, so it evaluates once, at the end.
    """
    if total_steps < EVAL_MIN_STEPS:
        return max(1, total_steps) + 1
    return max(config.eval_steps, math.ceil(total_steps / EVAL_MAX_COUNT))


def default_preset(device: str) -> str:
    """The preset chosen for a device by default (taste-cpu on a CPU)."""
    return DEFAULT_PRESETS.get(device, DEFAULT_PRESETS["cpu"])


def load_preset(name: str) -> TrainConfig:
    path = PRESETS_DIR / f"{name}.yaml"
    if not path.exists():
        raise SettingsError("preset", f"no preset named {name!r}; available: {', '.join(preset_names())}.")
    return TrainConfig.from_yaml(path)
