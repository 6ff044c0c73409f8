#!/usr/bin/env python
"""Worker process of the benchmark's `mega-chunk-hf4` contender: transformers 4.x's `MegaForCausalLM` with
chunking (Mega-chunk). transformers 5, which ssmlm needs, removed Mega, so it runs here, in a process of its own
that public.py starts by this file's path, with a transformers 4.x environment first on the path:

    PYTHONPATH=.bench-contenders/transformers4 python ssmlm/benchmark/legacy_mega_worker.py

(scripts/install_bench_contenders.sh creates that environment). It must not import ssmlm, and nothing imports it:
it ships in the package so that an installed ssmlm finds it too. It reads one JSON object
per line on stdin and answers each with one JSON line on stdout:

    {"cmd": "build", "vocab_size", "hidden_size", "num_layers", "chunk_size", "target_parameters", "threads",
     "device", "memory_limit_mib"}
        -> {"ok": true, "parameters", "non_embedding_parameters", "class", "blocks", "config", "implementation"}
        The FFN width (nffn_hidden_size) is solved so the parameter count comes closest to target_parameters.
    {"cmd": "prepare", "length": L, "batch_size": B}  -> {"ok": true}
        A fresh AdamW and the benchmark's random tokens of that length.
    {"cmd": "step"}     -> {"ok": true, "seconds": s}   one forward + backward (LM loss) + AdamW step, timed here
    {"cmd": "memory"}   -> {"ok": true, "peak_mib", "baseline_mib"}   this process's peak, as the harness's
                           peak-memory processes report it (ru_maxrss on the CPU, max_memory_allocated on a GPU)
    {"cmd": "quit"}, or the end of stdin: exit.

A request that fails is answered {"ok": false, "error": "Type: message", "out_of_memory": bool}, and the worker
stays up.
"""

import contextlib
import json
import os
import resource
import sys
import time
import traceback

import torch

# Anything a library prints must not land among the replies.
REPLIES, sys.stdout = sys.stdout, sys.stderr

OUT_OF_MEMORY_MARKERS = ("out of memory", "can't allocate memory")


def reply(message: dict):
    REPLIES.write(json.dumps(message) + "\n")
    REPLIES.flush()


def maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def import_mega():
    import transformers

    try:
        from transformers import MegaConfig, MegaForCausalLM
    except ImportError:
        location = os.path.dirname(os.path.dirname(transformers.__file__))
        raise ImportError(f"transformers {transformers.__version__} (from {location}) has no MegaForCausalLM, "
                          "removed in transformers 5: put a transformers 4.x environment first on PYTHONPATH") from None
    return transformers, MegaConfig, MegaForCausalLM


def mega_config(MegaConfig, request: dict, ffn_width: int):
    """Decoder-only, causal, chunked; the ssmlm Mega block's choices where transformers offers them (LayerNorm,
    SiLU, the simple relative-position bias, values 2d wide, Z d/4, EMA dimension 16, no dropout, no extra dense
    layer before the LM head, tied embeddings)."""
    hidden = request["hidden_size"]
    return MegaConfig(
        vocab_size=request["vocab_size"], hidden_size=hidden, num_hidden_layers=request["num_layers"],
        intermediate_size=2 * hidden, shared_representation_size=hidden // 4, ema_projection_size=16,
        nffn_hidden_size=ffn_width, bidirectional=False, is_decoder=True, use_chunking=True,
        chunk_size=request["chunk_size"], max_positions=request["chunk_size"], normalization_type="layernorm",
        activation="silu", relative_positional_bias="simple", dropout_prob=0.0, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, nffn_activation_dropout_prob=0.0, add_lm_hidden_dense_layer=False,
        tie_word_embeddings=True, pad_token_id=None,
    )


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


class Worker:
    def __init__(self):
        self.model = self.optimizer = self.tokens = self.device = None
        self.baseline_mib = 0.0

    def build(self, request: dict) -> dict:
        torch.set_num_threads(request["threads"])
        transformers, MegaConfig, MegaForCausalLM = import_mega()
        self.device = torch.device(request.get("device", "cpu"))
        self.baseline_mib = maxrss_mib() if self.device.type == "cpu" else 0.0
        if request.get("memory_limit_mib"):
            limit = request["memory_limit_mib"] * 2**20
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        # The count is linear in the FFN width: two builds on the meta device give the slope.
        with torch.device("meta"):
            at_256, at_512 = (count_parameters(MegaForCausalLM(mega_config(MegaConfig, request, width)))
                              for width in (256, 512))
        width = round(256 + (request["target_parameters"] - at_256) * 256 / (at_512 - at_256))
        torch.manual_seed(0)
        config = mega_config(MegaConfig, request, width)
        self.model = MegaForCausalLM(config).to(self.device)
        total = count_parameters(self.model)
        embedding = self.model.get_input_embeddings().weight.numel()
        fields = ("use_chunking", "chunk_size", "intermediate_size", "nffn_hidden_size", "shared_representation_size",
                  "ema_projection_size", "normalization_type", "relative_positional_bias")
        return {
            "class": type(self.model).__name__,
            "parameters": total,
            "non_embedding_parameters": total - embedding,
            "blocks": [type(layer).__name__ for layer in self.model.mega.layers],
            "config": {name: getattr(config, name) for name in fields},
            "implementation": f"transformers {transformers.__version__}",
        }

    def prepare(self, request: dict) -> dict:
        self.model.train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4)
        length, batch = request["length"], request.get("batch_size", 1)
        # As the harness draws them (ssmlm.benchmark.measure.random_tokens): the same tokens for the same length.
        generator = torch.Generator().manual_seed(length)
        vocab = self.model.config.vocab_size
        self.tokens = torch.randint(0, vocab, (batch, length), generator=generator).to(self.device)
        return {}

    def synchronize(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def step(self, request: dict) -> dict:
        autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if self.device.type == "cuda"
                    else contextlib.nullcontext())
        self.synchronize()
        start = time.perf_counter()
        with autocast:
            loss = self.model(input_ids=self.tokens, labels=self.tokens, use_cache=False).loss
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.synchronize()
        return {"seconds": time.perf_counter() - start}

    def memory(self, request: dict) -> dict:
        if self.device.type == "cuda":
            return {"peak_mib": torch.cuda.max_memory_allocated(self.device) / 2**20, "baseline_mib": 0.0}
        return {"peak_mib": maxrss_mib(), "baseline_mib": self.baseline_mib}


def main() -> int:
    worker = Worker()
    commands = {"build": worker.build, "prepare": worker.prepare, "step": worker.step, "memory": worker.memory}
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            request = json.loads(line)
            if request.get("cmd") == "quit":
                break
            if request.get("cmd") not in commands:
                raise ValueError(f"unknown command {request.get('cmd')!r}; expected one of {sorted(commands)} or quit")
            if request["cmd"] != "build" and worker.model is None:
                raise RuntimeError("no model: send build first")
            reply({"ok": True} | commands[request["cmd"]](request))
        except Exception as error:  # answered, so the harness reports it; the worker stays up
            traceback.print_exc()
            first_line = (str(error).strip().splitlines() or [""])[0]
            out_of_memory = isinstance(error, (MemoryError, torch.OutOfMemoryError)) or any(
                marker in str(error).lower() for marker in OUT_OF_MEMORY_MARKERS)
            reply({"ok": False, "error": f"{type(error).__name__}: {first_line}"[:300],
                   "out_of_memory": out_of_memory})
    return 0


if __name__ == "__main__":
    sys.exit(main())
