"""Length extrapolation (the GSS paper's Figure 9): perplexity of saved models at 1×..16× their training length,
by position in the context, in the convolutional (window) and streaming (recurrent) regimes.

    ssmlm-eval-length --model runs/gss runs/mega-chunk --data books=data/corpus/books/test.jsonl \
        --train-length 512 --multipliers 1 2 4 8 16 --out reports/extrapolation

For a length L, every document with at least L tokens gives one window: its first L tokens, each scored given
the tokens before it (the first given the EOS token that training puts between documents). Shorter documents
are left out and counted, never padded or joined, unless --concatenate-documents asks for the token stream of
all documents cut into L-token windows, which the output then says. A model that cannot run a length (full-
attention Mega past its `max_positions` option) is reported "not supported: <its error>" there, and the evaluation
goes on. Outputs: results.json (every number), results.md (tables) and perplexity.png. docs/eval_length.md explains
them.

data.py reads the documents and cuts the windows, passes.py runs the models (results.json's dict), report.py
writes results.md and plot.py perplexity.png from that dict alone.
"""

from __future__ import annotations

import json
from pathlib import Path

from .data import DataSpec, TokenizedDocument, Window, WindowSet, concatenated_windows, parse_data_spec, tokenize
from .passes import Settings, evaluate, evaluate_length
from .plot import write_plot
from .report import agreement_summary, render_markdown

__all__ = ["DataSpec", "Settings", "TokenizedDocument", "Window", "WindowSet", "agreement_summary",
           "concatenated_windows", "evaluate", "evaluate_length", "parse_data_spec", "render_markdown", "tokenize",
           "write_outputs", "write_plot"]


# Here rather than in report.py, which the plot draws on; the command line reads this and `evaluate` from the
# package when it runs, so a test can replace either.
def write_outputs(results: dict, out: Path) -> str:
    """results.json, results.md and perplexity.png in `out`; returns the agreement summary."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    (out / "results.md").write_text(render_markdown(results), encoding="utf-8")
    write_plot(results, out / "perplexity.png")
    return agreement_summary(results)
