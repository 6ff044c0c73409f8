"""Synthetic recall tasks: whether a sequence mixer can carry one token's identity across a distance (issue 31;
`ssmlm-recall`, ssmlm/study/recall.py).

    mqar                multi-query associative recall (Arora et al. 2023, "Zoology"; HazyResearch/zoology
                        zoology/data/multiquery_ar.py): `pairs` key-value pairs at the start, then the keys asked
                        again in random order at gaps drawn with p(gap = g) ∝ (g + 1)^(power_a - 1); an answer is
                        scored where its key is asked. Keys come from 1 .. V/2 - 1, values from V/2 .. V - 1, each
                        without replacement within a sequence; 0 fills the rest (zoology's random_non_queries=False).
    associative_recall  the H3 paper's (Fu, Dao et al. 2023, Sec. 3.1, Table 1; HazyResearch/safari
                        synthetics.py): `length` // 2 pairs under a key -> value map drawn afresh for each sequence,
                        then "=>", a key that occurred, and its value to predict.
    induction_head      the H3 paper's: `length` random tokens in which "=>" occurs once, followed by some token;
                        the sequence ends with "=>" and that token is to be predicted.
    selective_copy      the S4 repository's copying task (state-spaces/s4 src/dataloaders/datasets/copying.py):
                        `tokens` data tokens scattered among `length` noise positions, then `tokens` markers, at
                        which the data tokens are to be produced in order.

Each returns a RecallBatch. Everything is drawn from a torch.Generator seeded by the caller: the same arguments give
the same tensors (Zoology's filler drew from torch's global generator). The positions a task scores are its
queries, each with its distance: how many positions back the token it must recall stands (for associative recall,
the key's last occurrence).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

IGNORE = -100  # a position without a training target (the model's ignore index)


@dataclass
class RecallBatch:
    input_ids: torch.Tensor  # (n, L)
    targets: torch.Tensor  # (n, L): the token each position's output is trained toward (already shifted), or IGNORE
    queries: torch.Tensor  # (n, q): the positions scored
    answers: torch.Tensor  # (n, q): the token expected at each
    distances: torch.Tensor  # (n, q): from the recalled token's position to the query's
    chance: float  # the accuracy of guessing among the possible answers

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def __getitem__(self, rows) -> "RecallBatch":
        return RecallBatch(self.input_ids[rows], self.targets[rows], self.queries[rows], self.answers[rows],
                           self.distances[rows], self.chance)


def check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def check_mqar(length: int, pairs: int, vocab: int, power_a: float) -> None:
    check(pairs >= 1, f"pairs must be at least 1, got {pairs}")
    check(length % 2 == 0, f"length must be even for MQAR (keys are asked at even gaps), got {length}")
    check(length >= 4 * pairs, f"length {length} is too short for {pairs} pairs: MQAR needs length >= 4 x pairs "
                               f"(the pairs, then as many queries at distinct gaps)")
    check(vocab >= 2 * pairs + 2, f"vocab {vocab} is too small for {pairs} pairs: MQAR draws distinct keys from "
                                  f"1 .. vocab/2 - 1 and values from vocab/2 .. vocab - 1 (vocab >= {2 * pairs + 2})")
    check(0 < power_a <= 1, f"power_a must be in (0, 1] (1: gaps uniform), got {power_a}")


def mqar(count: int, length: int, pairs: int, vocab: int, seed: int, power_a: float = 0.01) -> RecallBatch:
    """Zoology's MQAR: k1 v1 ... kP vP, then key i asked at position 2P + 2 gap_i (gaps distinct), its value the
    target there; the values are never in the input."""
    check_mqar(length, pairs, vocab, power_a)
    generator = torch.Generator().manual_seed(seed)
    half = vocab // 2
    keys = torch.rand(count, half - 1, generator=generator).argsort(-1)[:, :pairs] + 1
    values = torch.rand(count, vocab - half, generator=generator).argsort(-1)[:, :pairs] + half
    context = 2 * pairs
    space = (length - context) // 2
    weights = power_a * torch.arange(1, space + 1, dtype=torch.float64) ** (power_a - 1)
    gaps = torch.multinomial(weights.repeat(count, 1), pairs, replacement=False, generator=generator)
    inputs = torch.zeros(count, length, dtype=torch.long)
    inputs[:, 0:context:2], inputs[:, 1:context:2] = keys, values
    queries = context + 2 * gaps
    inputs.scatter_(1, queries, keys)
    targets = torch.full_like(inputs, IGNORE).scatter_(1, queries, values)
    distances = queries - 2 * torch.arange(pairs)
    return RecallBatch(inputs, targets, queries, values, distances, chance=1 / (vocab - half))


def check_associative_recall(length: int, vocab: int) -> None:
    check(vocab >= 4, f"vocab must be at least 4 for associative recall (a key, a value and 2 specials), got {vocab}")
    check(length >= 2 and length % 2 == 0, f"length must be an even number of key and value tokens, got {length}")


def associative_recall(count: int, length: int, vocab: int, seed: int) -> RecallBatch:
    """`length` // 2 pairs, "=>", the query, and its value as the last target: (count, length + 2) inputs. Keys are
    0 .. K - 1, values K .. 2K - 1 (K = (vocab - 2) // 2); "=>" is vocab - 2. Trained on every next token, as in
    the H3 paper (the answer's is the only one that can be learned exactly)."""
    check_associative_recall(length, vocab)
    generator = torch.Generator().manual_seed(seed)
    keys, arrow, pairs = (vocab - 2) // 2, vocab - 2, length // 2
    mapping = torch.randint(0, keys, (count, keys), generator=generator) + keys
    pair_keys = torch.randint(0, keys, (count, pairs), generator=generator)
    asked = torch.randint(0, pairs, (count, 1), generator=generator)
    query = pair_keys.gather(1, asked)
    answer = mapping.gather(1, query)
    body = torch.stack([pair_keys, mapping.gather(1, pair_keys)], -1).flatten(1)
    inputs = torch.cat([body, torch.full((count, 1), arrow), query], dim=1)
    # The query's distance is to the key's last occurrence (it may occur more than once).
    last = torch.where(pair_keys == query, torch.arange(pairs), -1).amax(1, keepdim=True)
    position = torch.full((count, 1), length + 1)
    return RecallBatch(inputs, torch.cat([inputs[:, 1:], answer], 1), position, answer, position - 2 * last,
                       chance=1 / keys)


def check_induction_head(length: int, vocab: int) -> None:
    check(vocab >= 3, f"vocab must be at least 3 for the induction head (2 tokens and the trigger), got {vocab}")
    check(length >= 3, f"length must be at least 3 for the induction head, got {length}")


def induction_head(count: int, length: int, vocab: int, seed: int) -> RecallBatch:
    """`length` tokens from 0 .. vocab - 2 with "=>" (vocab - 1) at one position p < length - 2, then "=>": the
    token after the first "=>" is the answer. (count, length + 1) inputs, trained on every next token."""
    check_induction_head(length, vocab)
    generator = torch.Generator().manual_seed(seed)
    arrow = vocab - 1
    body = torch.randint(0, vocab - 1, (count, length), generator=generator)
    trigger = torch.randint(0, length - 2, (count, 1), generator=generator)
    body.scatter_(1, trigger, arrow)
    answer = body.gather(1, trigger + 1)
    inputs = torch.cat([body, torch.full((count, 1), arrow)], dim=1)
    position = torch.full((count, 1), length)
    return RecallBatch(inputs, torch.cat([inputs[:, 1:], answer], 1), position, answer, position - trigger - 1,
                       chance=1 / (vocab - 1))


def check_selective_copy(length: int, tokens: int, vocab: int) -> None:
    check(vocab >= 3, f"vocab must be at least 3 for selective copying (noise, marker and a token), got {vocab}")
    check(1 <= tokens <= length, f"tokens ({tokens}) must be between 1 and length ({length})")


def selective_copy(count: int, length: int, tokens: int, vocab: int, seed: int) -> RecallBatch:
    """`tokens` data tokens from 1 .. vocab - 2 at random sorted positions among `length` noise zeros, then `tokens`
    markers (vocab - 1): at the j-th marker the j-th data token is the target. (count, length + tokens) inputs."""
    check_selective_copy(length, tokens, vocab)
    generator = torch.Generator().manual_seed(seed)
    data = torch.randint(1, vocab - 1, (count, tokens), generator=generator)
    sources = torch.rand(count, length, generator=generator).argsort(-1)[:, :tokens].sort(-1).values
    inputs = torch.cat([torch.zeros(count, length, dtype=torch.long).scatter_(1, sources, data),
                        torch.full((count, tokens), vocab - 1)], dim=1)
    queries = (length + torch.arange(tokens)).expand(count, -1)
    targets = torch.full_like(inputs, IGNORE).scatter_(1, queries, data)
    return RecallBatch(inputs, targets, queries, data, queries - sources, chance=1 / (vocab - 2))
