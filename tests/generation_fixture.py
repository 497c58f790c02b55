"""A stand-in for the gpt2 branch's outputs: `finetuned/generation/` (a tiny GPT2LMHeadModel
and a byte-level BPE tokenizer, saved as the finetune stage saves them) and
`prepared/generation/validation.jsonl`. Replace with the real pipeline's once it exists.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

EOT = "<|endoftext|>"
TEXTS = [
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Once upon a time there was a small town by the sea, where fishermen sang at dawn.",
    "Machine learning models learn patterns from data and make predictions.",
    "The weather today is sunny with a light breeze from the west.",
    "她在北京大学学习计算机科学，每天早上跑步。",
    "今天天气很好，我们去公园散步吧。",
    "Emoji travel well: 🚀 launches, 🌍 spins, 🎉 celebrates, 😀 smiles.",
    "Mixed text: café, naïve, résumé, 東京, 서울, and 🍣 for dinner.",
]
VALIDATION = [
    {"prompt": "The quick brown fox", "completion": " jumps over the lazy dog."},
    {"prompt": "今天天气", "completion": "很好。"},
    {"prompt": "", "completion": "Once upon a time there was a town 🚀."},
    {"prompt": "Machine learning", "completion": " models learn patterns."},
]


def byte_level_tokenizer(texts: list[str], vocab_size: int) -> Tokenizer:
    """The interface's tokenizer: byte-level BPE, one special token `<|endoftext|>` (id 0)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    assert tokenizer.token_to_id(EOT) == 0
    return tokenizer


def save_finetuned(model, tokenizer: Tokenizer, folder: Path) -> None:
    """save_pretrained (safetensors) plus the PreTrainedTokenizerFast files."""
    from transformers import PreTrainedTokenizerFast

    model.save_pretrained(str(folder))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=EOT,
        eos_token=EOT,
        unk_token=EOT,
        pad_token=EOT,
        model_max_length=model.config.n_positions,
    )
    fast.save_pretrained(str(folder))
    # What the finetune stage writes beside the model (compress reads max_seq_len).
    task = {"task": "generation", "labels": [], "init": "pretrained"}
    task["max_seq_len"] = model.config.n_positions
    (folder / "task.json").write_text(json.dumps(task), encoding="utf-8")


def gpt2(vocab_size: int, layers: int, width: int, heads: int, positions: int, seed: int = 0):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=vocab_size,
        n_positions=positions,
        n_embd=width,
        n_layer=layers,
        n_head=heads,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    torch.manual_seed(seed)
    return GPT2LMHeadModel(config).eval()


def write_prepared(folder: Path, examples: list[dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(e, ensure_ascii=False) for e in examples]
    (folder / "validation.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")


def fit(model, tokenizer: Tokenizer, texts: list[str], steps: int, lr: float = 3e-3) -> None:
    """A few full-batch steps of next-token training, each text followed by <|endoftext|>
    (as fine-tuning lays out a completion), so that greedy decoding continues the texts
    (Chinese and emoji split across tokens)."""
    import torch

    rows = [[*tokenizer.encode(t).ids, 0] for t in texts]
    width = max(len(r) for r in rows)
    ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    labels = ids.masked_fill(mask == 0, -100)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()


def build_workspace(root: Path) -> Path:
    """root/finetuned/generation and root/prepared/generation: a 2 x 64 model fitted to TEXTS."""
    tokenizer = byte_level_tokenizer(TEXTS * 4, vocab_size=400)
    model = gpt2(tokenizer.get_vocab_size(), layers=2, width=64, heads=2, positions=128)
    fit(model, tokenizer, TEXTS, steps=150)
    save_finetuned(model, tokenizer, root / "finetuned" / "generation")
    write_prepared(root / "prepared" / "generation", VALIDATION)
    return root


def paragraphs(path: Path) -> list[str]:
    """WikiText's paragraphs (headings dropped)."""
    lines = path.read_text(encoding="utf-8").split("\n")
    return [t.strip() for t in lines if len(t.split()) > 20 and not t.strip().startswith("=")]


def fit_for(model, tokenizer: Tokenizer, texts: list[str], seconds: float, block: int) -> int:
    """Next-token training on blocks of the texts for `seconds`; returns the steps taken."""
    import time

    import torch

    ids = [i for t in texts for i in (0, *tokenizer.encode(t).ids)]
    blocks = torch.tensor(ids[: len(ids) // block * block]).view(-1, block)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    model.train()
    steps, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        batch = blocks[torch.randint(len(blocks), (16,), generator=generator)]
        model(input_ids=batch, labels=batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        steps += 1
    model.eval()
    return steps


def main() -> None:
    """A bench-sized stand-in (e.g. 4 x 256) trained for a while on WikiText-2:
    `python tests/generation_fixture.py --out DIR` writes DIR/finetuned/generation and
    DIR/prepared/generation (validation: a paragraph's first words -> its next ones)."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--wikitext", type=Path, default=Path("../shared/data/wikitext-2"))
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--vocab", type=int, default=4096)
    args = parser.parse_args()
    train = paragraphs(args.wikitext / "wiki.test.tokens")
    held_out = paragraphs(args.wikitext / "wiki.valid.tokens")[:128]
    tokenizer = byte_level_tokenizer(train, args.vocab)
    model = gpt2(tokenizer.get_vocab_size(), args.layers, args.width, args.width // 64, 256)
    steps = fit_for(model, tokenizer, train, args.seconds, block=128)
    save_finetuned(model, tokenizer, args.out / "finetuned" / "generation")
    examples = []
    for text in held_out:
        words = text.split()
        examples.append({"prompt": " ".join(words[:8]), "completion": " " + " ".join(words[8:72])})
    write_prepared(args.out / "prepared" / "generation", examples)
    print(f"{steps} steps; wrote {args.out}")


if __name__ == "__main__":
    main()
