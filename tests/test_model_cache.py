"""The one model cache of the UI, the CLI and the demo Space: access per request, memory bounded, LRU.

Against the fake Hub (tests/hub_server.py): a public tiny model and a gated copy of it. A gated model
loaded with one visitor's token must never be served to a request whose token cannot read it, and
eviction must wait, through the model's gate, for an answer in progress.
"""

from __future__ import annotations

import threading
import time

import pytest

from core.generation import GenerationSettings
from engine.hub import HubError
from services.model_cache import ModelCache

PUBLIC, GATED = "tiny-org/tiny-chat", "gated-org/tiny-gated"
READER, NO_LICENCE = "hf_test_reader", "hf_test_nolicence"
WAIT = 60.0  # deadlock guard only


def test_a_gated_model_is_served_only_to_requests_whose_token_can_read_it(fake_hub) -> None:
    cache = ModelCache(budget_bytes=2**34)
    loaded = cache.chat_model(GATED, READER)
    assert cache.chat_model(GATED, READER) is loaded  # one copy of the weights
    with pytest.raises(HubError) as no_token:
        cache.chat_model(GATED, None)
    assert no_token.value.kind == "gated" and READER not in str(no_token.value)
    with pytest.raises(HubError) as no_licence:
        cache.chat_model(GATED, NO_LICENCE)
    assert no_licence.value.kind == "gated"
    with pytest.raises(HubError):
        cache.tokenizer(GATED, None)
    assert cache.loaded() == [GATED]
    assert cache.chat_model(PUBLIC, None).generate("hi", settings=GenerationSettings(max_new_tokens=2)) is not None


def test_beyond_the_budget_the_least_recently_used_model_is_unloaded(fake_hub) -> None:
    probe = ModelCache(budget_bytes=2**34)
    one_model = probe.chat_model(PUBLIC).memory_bytes
    cache = ModelCache(budget_bytes=int(one_model * 1.5))
    first = cache.chat_model(PUBLIC)
    second = cache.chat_model(GATED, READER)
    assert cache.loaded() == [GATED]
    assert first.model is None and second.model is not None
    assert cache.memory_bytes() <= cache.budget_bytes
    again = cache.chat_model(PUBLIC)  # loads again on demand, evicting the other
    assert again is not first and cache.loaded() == [PUBLIC]


def test_eviction_waits_for_the_answer_in_progress(fake_hub) -> None:
    probe = ModelCache(budget_bytes=2**34)
    one_model = probe.chat_model(PUBLIC).memory_bytes
    cache = ModelCache(budget_bytes=int(one_model * 1.5))
    busy = cache.chat_model(PUBLIC)
    stream = busy.stream("count", settings=GenerationSettings(max_new_tokens=500, repetition_penalty=1.0))
    assert next(stream)  # an answer is being generated on the model that will be evicted
    loader = threading.Thread(target=cache.chat_model, args=(GATED, READER))
    loader.start()
    deadline = time.monotonic() + WAIT
    while len(busy.gate._line) != 1 and time.monotonic() < deadline:  # eviction waits in the model's line
        time.sleep(0.01)
    assert len(busy.gate._line) == 1 and busy.model is not None
    stream.close()  # the visitor leaves: the answer stops, the model is released
    loader.join(WAIT)
    assert not loader.is_alive()
    assert busy.model is None and cache.loaded() == [GATED]
