"""``python -m bench serving``: one shared model, concurrent visitors on different adapters.

Two questions, on the bundled model with random LoRA adapters (answers differ per adapter, which is
all a mix-up check needs):

1. Correctness: interleaved greedy requests from several threads over the base and two adapters;
   each answer must equal the answer the same request gets alone, and the provenance read from the
   model must name the requested adapter. Counted: requests, mismatches.
2. Fairness: 4 visitors, each on its own adapter, asking back to back. Measured: the longest time a
   request waited for its adapter to be switched in (the gate's own measure) and the wait before the
   first token per request (p50/p95/max). A starved adapter would show as a wait of many answers.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

PROMPTS = ["What is LoRA?", "Name a colour.", "Say hello.", "What is two plus two?", "Describe the sea.",
           "What is a dataset?", "Give me a fruit.", "What does RAG mean?"]


def make_adapters(count: int, folder: Path) -> list[Path]:
    """Random non-zero LoRA adapters on the bundled model, so each gives different answers."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from engine.models import bundled_model_dir

    out = []
    for i in range(count):
        torch.manual_seed(100 + i)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(bundled_model_dir(), local_files_only=True),
                               LoraConfig(r=8, lora_alpha=64, target_modules=["q_proj", "v_proj"],
                                          init_lora_weights=False))
        path = folder / f"run-{i}" / "adapter"
        model.save_pretrained(path)
        out.append(path)
    return out


def correctness(chat: Any, adapters: list[Path], requests: int, threads: int, seed: int) -> dict[str, Any]:
    """Interleaved requests over base + adapters; answers compared with each request answered alone."""
    from core.generation import GenerationSettings
    from engine.infer import adapter_name

    settings = GenerationSettings(max_new_tokens=12)
    choices: list[Path | None] = [None, *adapters]
    alone = {(p, str(a)): chat.generate(p, adapter=a, settings=settings) for p in PROMPTS for a in choices}
    rng = random.Random(seed)
    plan = [(rng.choice(PROMPTS), rng.choice(choices)) for _ in range(requests)]
    results: list[tuple[bool, bool]] = []
    lock = threading.Lock()

    def visitor(items: list[tuple[str, Path | None]]) -> None:
        for prompt, adapter in items:
            records: list[Any] = []
            text = chat.generate(prompt, adapter=adapter, settings=settings, on_provenance=records.append)
            expected = adapter_name(adapter) if adapter else None
            with lock:
                results.append((text == alone[(prompt, str(adapter))],
                                records[0].active_at_start == records[0].active_at_end == expected))

    workers = [threading.Thread(target=visitor, args=(plan[i::threads],)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return {"requests": len(results), "threads": threads, "answer_mismatches": sum(not ok for ok, _ in results),
            "provenance_mismatches": sum(not ok for _, ok in results)}


def fairness(chat: Any, adapters: list[Path], per_visitor: int) -> dict[str, Any]:
    """4 visitors on 4 adapters, back to back; how long does a request wait for its adapter?"""
    from core.generation import GenerationSettings

    settings = GenerationSettings(max_new_tokens=16)
    waits: list[float] = []
    lock = threading.Lock()
    chat.gate.longest_switch_wait = 0.0
    switches_before = chat.gate.switches

    def visitor(adapter: Path, offset: int) -> None:
        for i in range(per_visitor):
            start = time.perf_counter()
            stream = chat.stream(PROMPTS[(offset + i) % len(PROMPTS)], adapter=adapter, settings=settings)
            next(stream, None)
            with lock:
                waits.append(time.perf_counter() - start)
            for _ in stream:
                pass

    workers = [threading.Thread(target=visitor, args=(a, i)) for i, a in enumerate(adapters)]
    t0 = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    ordered = sorted(waits)
    return {"visitors": len(adapters), "requests": len(waits), "seconds": round(time.perf_counter() - t0, 1),
            "switches": chat.gate.switches - switches_before,
            "longest_switch_wait_s": round(chat.gate.longest_switch_wait, 2),
            "first_token_wait_p50_s": round(statistics.median(ordered), 2),
            "first_token_wait_p95_s": round(ordered[int(0.95 * (len(ordered) - 1))], 2),
            "first_token_wait_max_s": round(ordered[-1], 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench serving", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=64, help="interleaved requests in the correctness part")
    parser.add_argument("--threads", type=int, default=6)
    parser.add_argument("--per-visitor", type=int, default=6, help="requests per visitor in the fairness part")
    parser.add_argument("--seed", type=int, default=18)
    args = parser.parse_args(argv)

    import os

    from engine.infer import ChatModel

    chat = ChatModel()
    with tempfile.TemporaryDirectory() as tmp:
        adapters = make_adapters(4, Path(tmp))
        result = {"correctness": correctness(chat, adapters[:2], args.requests, args.threads, args.seed),
                  "fairness": fairness(chat, adapters, args.per_visitor),
                  "load_average": [round(x, 2) for x in os.getloadavg()]}
    print(json.dumps(result, indent=2))
    return 0
