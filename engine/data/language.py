"""Does the data's language match what the chosen model was trained on?

A model trained on English only (SmolLM2) learns little from Spanish examples and answers them poorly; a
newcomer cannot know that. The language of a sample of examples is identified with py3langid (BSD) and
compared with :data:`MODEL_LANGUAGES`, the one table of what each model family was trained on.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

from engine.data.schema import Example

#: Examples looked at (identification is quick, but a 100k-row file needs no more to say what it is in).
SAMPLE = 300
#: Characters of each example given to the identifier.
CHARS = 600
#: Warn when at least this share of the sampled examples is in a language the model was not trained on.
WARN_SHARE = 0.2

#: Model family (a regular expression on the model id, first match wins) → languages it was trained on
#: (ISO 639-1 codes as py3langid names them); None: many languages, no warning.
MODEL_LANGUAGES: list[tuple[str, str, tuple[str, ...] | None]] = [
    (r"smollm", "SmolLM2", ("en",)),
    (r"qwen", "Qwen", None),  # 29+ languages
    (r"gemma", "Gemma", None),  # 140+ languages
    (r"llama-?3", "Llama 3", ("en", "de", "fr", "it", "pt", "hi", "es", "th")),
    (r"phi-?[34]", "Phi", ("en",)),
    (r"tinyllama", "TinyLlama", ("en",)),
]

LANGUAGE_NAMES = {
    "en": "English", "es": "Spanish", "fr": "French", "de": "German", "it": "Italian", "pt": "Portuguese",
    "nl": "Dutch", "ru": "Russian", "zh": "Chinese", "ja": "Japanese", "ko": "Korean", "ar": "Arabic",
    "hi": "Hindi", "th": "Thai", "vi": "Vietnamese", "tr": "Turkish", "pl": "Polish", "sv": "Swedish",
    "uk": "Ukrainian", "id": "Indonesian", "cs": "Czech", "el": "Greek", "he": "Hebrew", "fa": "Persian",
}


@dataclass(frozen=True)
class LanguageCheck:
    counts: dict[str, int]  # language code -> sampled examples
    model: str  # the model family's name
    trained_on: tuple[str, ...]
    foreign: int  # sampled examples in a language the model was not trained on
    sampled: int

    @property
    def warning(self) -> str:
        if not self.sampled or self.foreign < WARN_SHARE * self.sampled:
            return ""
        top = Counter({k: v for k, v in self.counts.items() if k not in self.trained_on}).most_common(3)
        langs = ", ".join(f"{language_name(k)} ({v})" for k, v in top)
        trained = ", ".join(language_name(k) for k in self.trained_on)
        return (f"{self.foreign} of the {self.sampled} examples looked at are not in a language {self.model} was "
                f"trained on ({langs}; {self.model} knows {trained}). It will learn them poorly: choose a "
                "multilingual model in the Train tab (Qwen2.5, for instance) or use data in its language.")


def language_name(code: str) -> str:
    return LANGUAGE_NAMES.get(code, code)


def model_languages(model_id: str) -> tuple[str, tuple[str, ...] | None] | None:
    """(family name, languages) for a model id, or None when the table does not know the model."""
    lowered = (model_id or "").lower()
    for pattern, name, languages in MODEL_LANGUAGES:
        if re.search(pattern, lowered):
            return name, languages
    return None


def example_text(example: Example) -> str:
    """What a person wrote in the example (not tool lists), trimmed for identification."""
    text = example.text if example.is_text else "\n".join(m.content for m in example.messages if m.role != "tool")
    return (text or "")[:CHARS]


def identify(texts: list[str]) -> Counter[str]:
    """Language code per text (texts without letters are skipped)."""
    import py3langid

    return Counter(py3langid.classify(t)[0] for t in texts if re.search(r"[^\W\d_]{3}", t))


def check_language(examples: list[Example], model_id: str) -> LanguageCheck | None:
    """The language check for this model, or None when the model is unknown or multilingual (nothing to say)."""
    known = model_languages(model_id)
    if known is None or known[1] is None:
        return None
    name, trained_on = known
    step = max(1, len(examples) // SAMPLE)
    counts = identify([example_text(ex) for ex in examples[::step][:SAMPLE]])
    foreign = sum(n for code, n in counts.items() if code not in trained_on)
    return LanguageCheck(dict(counts), name, trained_on, foreign, sum(counts.values()))


def language_warning(examples: list[Example], model_id: str) -> str:
    """One sentence when the data is not in the model's language(s); empty otherwise (or without py3langid)."""
    try:
        check = check_language(examples, model_id)
    except ImportError:
        return ""
    return check.warning if check else ""
