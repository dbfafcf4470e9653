"""Compare with the real bundled model: RAG beats base on SQuAD-small; four arms cost one model's memory."""

from __future__ import annotations

import gc
import json
from pathlib import Path

import pytest

from engine.__main__ import main

SQUAD = Path(__file__).resolve().parents[1].parent / "shared" / "testdata" / "rag" / "squad_small" / "derived"

pytestmark = [pytest.mark.slow]


def test_cli_rag_beats_base_on_20_squad_questions(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    """The CLI contract, end to end: retrieval and prompting must work for the RAG arm to win."""
    out = tmp_path / "report.json"
    code = main(["compare", "--questions", str(SQUAD / "questions.jsonl"), "--arms", "base,rag",
                 "--corpus", str(SQUAD / "corpus.jsonl"), "--limit", "20", "--max-new-tokens", "48",
                 # repetition penalty 1 for both arms: a penalty also punishes copying words from the context
                 "--temperature", "0", "--repetition-penalty", "1.0",
                 "--out", str(out), "--html", str(tmp_path / "report.html")])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    summary = json.loads(captured.out)["arms"]
    base, rag = summary["base"], summary["rag"]
    with capsys.disabled():
        print(f"\nanswer-contained on 20 SQuAD questions: base {base['contained']:.2f}, rag {rag['contained']:.2f}; "
              f"rag retrieval hit {rag['retrieval_hit']:.2f}; retrieval failures {rag['retrieval_failures']}, "
              f"generation failures {rag['generation_failures']}")
    assert rag["retrieval_hit"] >= 0.4  # one chunk per question: measured 9/20 gold paragraphs at rank 1
    # At least 2 more of the 20 answered; a tie or a 1-question edge would not pass. Measured: base 1; RAG 3 with
    # the reranker on (the default since #13: 9/20 gold passages at rank 1, as without it, but another 9: it
    # gains one and loses one on this slice, and the 135M model answers one fewer of them); RAG 4+ without it.
    assert rag["contained"] * 20 >= base["contained"] * 20 + 2
    report = json.loads(out.read_text())
    assert len(report["questions"]) == 20
    assert report["config"]["generation"]["max_new_tokens"] == 48 and report["config"]["pipeline"]
    first = report["questions"][0]["answers"]["rag"]
    assert first["retrieved"] and first["ttft_s"] is not None and first["tokens"] > 0
    assert "Tune Studio comparison" in (tmp_path / "report.html").read_text()


def _unique_bytes(model) -> int:
    """Bytes of distinct tensor storage among parameters and buffers: a second weight copy would double it."""
    seen, total = set(), 0
    for t in [*model.parameters(), *model.buffers()]:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in seen:
            seen.add(ptr)
            total += t.untyped_storage().nbytes()
    return total


def _rss() -> int:
    with open("/proc/self/statm") as f:
        import os

        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _random_adapter(path: Path) -> Path:
    """A LoRA adapter with non-zero weights (so the ft arms really differ), made without training."""
    import torch
    from peft import LoraConfig, get_peft_model

    from engine.models import BUNDLED_ID, load_base_model

    torch.manual_seed(0)
    model = get_peft_model(load_base_model(BUNDLED_ID, device="cpu", dtype="float32"),
                           LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                      init_lora_weights=False))
    model.save_pretrained(str(path))
    del model
    gc.collect()
    return path


def test_four_arms_share_one_copy_of_the_weights(tmp_path: Path):
    from core.generation import GenerationSettings
    from engine.infer import ChatModel
    from services.compare import Comparer, build_corpus_index, load_questions

    adapter = _random_adapter(tmp_path / "adapter")
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("\n".join((SQUAD / "corpus.jsonl").read_text().splitlines()[:10]) + "\n")
    index = build_corpus_index(corpus, tmp_path / "index")
    questions = load_questions(SQUAD / "questions.jsonl", limit=2)
    settings = GenerationSettings(max_new_tokens=8)

    chat = ChatModel()
    one_model = _unique_bytes(chat.model)
    chat.generate("Hello", settings=settings)  # warm up: allocator pools and caches count once
    rss_one = _rss()
    comparer = Comparer(chat, arms=["base", "ft", "rag", "ft+rag"], adapter=adapter, index=index, generation=settings)
    report = comparer.run(questions)
    gc.collect()
    four_arms = _unique_bytes(chat.model)
    rss_four = _rss()
    print(f"\none model: {one_model / 2**20:.0f} MiB of weights, RSS {rss_one / 2**20:.0f} MiB; four arms: "
          f"{four_arms / 2**20:.0f} MiB of weights, RSS {rss_four / 2**20:.0f} MiB")
    assert four_arms <= one_model * 1.05  # only the small LoRA matrices were added
    assert rss_four - rss_one < 0.5 * one_model  # far below a second copy
    answers = report.rows[0].answers
    assert set(answers) == {"base", "ft", "rag", "ft+rag"}
    assert all(a.error is None for a in answers.values()), {k: a.error for k, a in answers.items()}
    assert answers["ft"].text != answers["base"].text  # the adapter really is switched on for ft...
    assert answers["rag"].retrieved and answers["ft+rag"].retrieved  # ...and the RAG arms got context
