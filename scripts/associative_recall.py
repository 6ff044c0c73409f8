#!/usr/bin/env python
"""A capability check: the synthetic associative-recall task of the H3 paper (Fu, Dao et al., ICLR 2023, Sec. 3.1
and Table 1; HazyResearch/safari `synthetics.py`), one small model of each block kind, trained on the CPU.

    python scripts/associative_recall.py --minutes 2 --out reports/associative-recall.json

Each sequence pairs keys with values under a map drawn afresh for it: `k1 v1 k2 v2 ... => q ?`, the query q one
of the keys that occurred, the answer its value. A model answers only by looking back to where q was paired, which
is the point: attention and H3 (which the paper built to do this, by its shift SSM and multiplicative
interaction) solve it; S4D and GSS, whose states decay and mix, only partly (the paper's Table 1: H3 99.8%,
attention 100%, S4D 86.0%, GSS 78.0%, chance 25%, at vocabulary 10, length 20, 2 layers).

Every model is 2 blocks of one kind, width 32, trained with the full next-token loss on the same 5,000 sequences
for `--minutes` (or `--max-steps`) each; accuracy is the answer's, on 500 other sequences, greedy. The kinds:
attention (full, RoPE), h3, gss (DSS), ssm with S4D (the S4D model of the paper), mega (full attention).
"""

import argparse
import json
import math
import platform
import time
from pathlib import Path

import torch
from torch.nn import functional as F

from ssmlm import SSMLMConfig, SSMLMForCausalLM
from ssmlm.tooling.markdown import markdown_table

MODELS = {
    "attention": dict(block_types=["attention"] * 2, block_options={"attention": {"num_heads": 1}}),
    "h3": dict(block_types=["h3"] * 2, block_options={"h3": {"shift_size": 8, "state_size": 32}}),
    "gss": dict(block_types=["gss"] * 2),
    "s4d": dict(block_types=["ssm"] * 2, ssm_kernel="s4d", ssm_kernel_options={"init": "lin"}, ssm_state_size=32),
    "mega": dict(block_types=["mega"] * 2, block_options={"mega": {"max_positions": 64}}),
}


def make_data(count: int, vocab: int, length: int, generator: torch.Generator) -> torch.Tensor:
    """`count` sequences of `length` // 2 key-value pairs, then "=>", a query key and its value: (count, length + 3).
    Tokens: keys 0 .. K-1, values K .. 2K-1 (K = (vocab - 2) // 2), "=>" = vocab - 2; vocab - 1 is unused."""
    keys = (vocab - 2) // 2
    arrow = vocab - 2
    mapping = torch.randint(0, keys, (count, keys), generator=generator) + keys  # each sequence's key -> value
    pair_keys = torch.randint(0, keys, (count, length // 2), generator=generator)
    pair_values = mapping.gather(1, pair_keys)
    pairs = torch.stack([pair_keys, pair_values], -1).flatten(1)
    query = pair_keys.gather(1, torch.randint(0, length // 2, (count, 1), generator=generator))
    answer = mapping.gather(1, query)
    return torch.cat([pairs, torch.full((count, 1), arrow), query, answer], dim=1)


def accuracy(model, data: torch.Tensor) -> float:
    """The share of sequences whose answer is the model's most likely token after the query."""
    with torch.no_grad():
        logits = model(data[:, :-1]).logits[:, -1]
    return (logits.argmax(-1) == data[:, -1]).float().mean().item()


def train(name: str, train_data, test_data, args) -> dict:
    torch.manual_seed(args.seed)
    config = SSMLMConfig(vocab_size=args.vocab, hidden_size=args.width, num_hidden_layers=2,
                         intermediate_size=4 * args.width, **MODELS[name])
    model = SSMLMForCausalLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=0.1)
    generator = torch.Generator().manual_seed(args.seed)
    start, steps = time.perf_counter(), 0
    model.train()
    while steps < args.max_steps and time.perf_counter() - start < 60 * args.minutes:
        batch = train_data[torch.randint(0, len(train_data), (args.batch_size,), generator=generator)]
        logits = model(batch[:, :-1]).logits
        loss = F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        steps += 1
    model.eval()
    return {"model": name, "blocks": config.block_types, "parameters": model.num_parameters(), "steps": steps,
            "seconds": time.perf_counter() - start, "final_loss": loss.item(),
            "test_accuracy": accuracy(model, test_data), "train_accuracy": accuracy(model, train_data[:500])}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--minutes", type=float, default=2.0, help="training time per model (default 2)")
    parser.add_argument("--max-steps", type=int, default=1_000_000)
    parser.add_argument("--vocab", type=int, default=10, help="tokens, the 2 specials included (default 10)")
    parser.add_argument("--length", type=int, default=20, help="key and value tokens per sequence (default 20)")
    parser.add_argument("--train-size", type=int, default=5000)
    parser.add_argument("--test-size", type=int, default=500)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.vocab < 4 or args.length < 2:
        parser.error("--vocab must be at least 4 (a key, a value and 2 specials) and --length at least 2")
    torch.set_num_threads(args.threads)

    generator = torch.Generator().manual_seed(args.seed)
    train_data = make_data(args.train_size, args.vocab, args.length, generator)
    test_data = make_data(args.test_size, args.vocab, args.length, generator)
    chance = 1 / ((args.vocab - 2) // 2)
    results = [train(name, train_data, test_data, args) for name in args.models]
    print(f"Associative recall: vocabulary {args.vocab}, {args.length} key and value tokens, chance "
          f"{chance:.0%}; 2 blocks of width {args.width}, {args.minutes:g} min each on {args.threads} thread(s)\n")
    print("\n".join(markdown_table(
        ["model", "blocks", "parameters", "steps", "test accuracy", "train accuracy"],
        [[result["model"], " + ".join(result["blocks"]), f"{result['parameters']:,}", f"{result['steps']:,}",
          f"{result['test_accuracy']:.1%}", f"{result['train_accuracy']:.1%}"] for result in results])))
    if args.out:
        machine = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__}
        args.out.write_text(json.dumps({"machine": machine, "settings": vars(args) | {"out": str(args.out)},
                                        "chance": chance, "results": results}, indent=1) + "\n")
    return 0 if all(math.isfinite(r["final_loss"]) for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
