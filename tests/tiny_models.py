"""Tiny random-weight models in real shapes, for tests of mechanics (serving, caching, queues, tokens).

Speed and memory do not depend on weight values, and neither do gates, caches or job queues: a 2-layer
Llama with the bundled SmolLM2 tokenizer builds in about a second and generates real tokens through the
real transformers and PEFT code paths. Answer quality is asserted only with the bundled model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def make_tiny_model(folder: Path, tokenizer: Any, seed: int = 0) -> Path:
    """Save a random 2-layer Llama (hidden 64) and ``tokenizer`` into ``folder``; returns ``folder``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    folder.mkdir(parents=True, exist_ok=True)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def make_tiny_adapter(base_dir: Path, folder: Path, seed: int) -> Path:
    """A random (non-zero) LoRA adapter on ``base_dir``'s q/v projections, saved into ``folder``."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = get_peft_model(LlamaForCausalLM.from_pretrained(base_dir),
                           LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    model.save_pretrained(folder)
    return folder
