"""Beam search on any backend, batched: the baseline backtracking has to beat.

transformers' ``model.generate(num_beams=N)`` is the peer a transformers user would pick, and
the evaluation runs it as is there. llama.cpp has no beam search, so a comparison at equal
wall time on that backend needs one: :class:`BeamSearchDecoder` runs transformers' algorithm
over the backend interface (:class:`~backtrack.backends.base.BatchState`), several prompts'
beams in one batch, each beam a row.

The algorithm is transformers' vectorised ``_beam_search`` with ``early_stopping=True`` (what
the evaluation's ``beam:N`` baseline passes), for one prompt:

* each step, every running beam's next-token log-probabilities (``log_softmax`` of float32
  logits) are added to its score, and the best ``K = max(2, 1 + #EOS ids) * N`` (beam, token)
  candidates over all beams are taken, best first;
* a candidate *stops* if its token is an EOS id, its completion reaches ``max_new_tokens``,
  or its text now contains a stop string. A stopping candidate among the first ``N`` becomes
  a finished hypothesis, scored ``sum of log-probs / length ** length_penalty``; the best ``N``
  hypotheses are kept;
* the first ``N`` candidates that do not stop are the next running beams;
* the search ends once ``N`` hypotheses are finished (early stopping), or when every
  candidate stops; the result is the best hypothesis.

The first step has one running beam (transformers starts ``N`` copies of the prompt, all but
one scored ``-1e9``, so its candidates all come from the first: the same set), so the prompt is
prefilled once. When a beam has two children, the second gets a copy of the parent's cache
(:meth:`BatchState.copy_row`); a beam with none frees its row. One deviation: transformers
keeps a running beam scored ``-1e9`` when fewer than ``N`` candidates continue (only possible
when more than ``K - N`` of the ``K`` stop at once); this search runs fewer beams instead.

Cost accounting: ``counts.forward_passes`` counts every row fed (the prompt once, then one per
running beam per step), so ``beam:2`` costs about 2 forward passes per token, which is what it
takes from a batch on hardware where rows are not free. ``counts.wall_time_s`` runs from the
prompt's admission to the search's end, as for :class:`~backtrack.engine.batch.BatchDecoder`
rows.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import torch

from backtrack.backends.base import BatchState, as_backend
from backtrack.engine.prompt import encode_prompt, eos_ids_for
from backtrack.engine.results import Counts, GenerationResult
from backtrack.engine.settings import GenerationConfig
from backtrack.engine.text import DetokState, IncrementalDetokenizer, find_stop


@dataclass
class _Beam:
    """A running beam: its completion so far, its row, and the token it will be fed next."""

    slot: int
    tokens: list[int]
    logprobs: list[float]
    score: float  # sum of the completion's log-probabilities
    text: str = ""
    detok: DetokState = field(default_factory=DetokState)


@dataclass
class _Hypothesis:
    """A finished candidate: its length-normalised score and completion."""

    score: float
    tokens: list[int]
    logprobs: list[float]
    text: str
    finish_reason: str
    stop_string: str | None


@dataclass
class _Search:
    """One prompt's beam search: its rows, running beams and finished hypotheses."""

    index: int
    prompt_ids: list[int]
    slots: list[int]
    beams: list[_Beam]
    finished: list[_Hypothesis] = field(default_factory=list)
    forward_passes: int = 1  # the prompt's prefill
    started: float = 0.0
    done: bool = False


class BeamSearchDecoder:
    """Beam search over the backend interface, several prompts per batch.

    >>> decoder = BeamSearchDecoder(model, tokenizer, beams=2)          # doctest: +SKIP
    >>> config = GenerationConfig(max_new_tokens=256, stop=["\\ndef "])
    >>> for index, result in decoder.generate_many(prompts, config, batch_size=16):
    ...     print(index, result.text)

    Args:
        model: as for :class:`~backtrack.engine.decoder.Decoder` (a transformers model or a
            backend such as ``LlamaCppModel``).
        tokenizer: as for :class:`~backtrack.engine.decoder.Decoder`.
        beams: ``N``, the number of beams (>= 1; 1 is greedy decoding).
        length_penalty: hypotheses are scored ``log-prob sum / length ** length_penalty``
            (transformers' default, 1.0).

    Only ``max_new_tokens``, ``stop`` and ``eos_token_ids`` of a :class:`GenerationConfig`
    apply: beam search draws nothing, so temperature, top-k and seeds are ignored. Banned
    strings and operators are refused: they belong to the backtracking engine.
    """

    def __init__(self, model, tokenizer, beams: int = 2, length_penalty: float = 1.0) -> None:
        if beams < 1:
            raise ValueError(f"beams must be >= 1, got {beams}")
        self.model = model
        self.backend = as_backend(model)
        self.tokenizer = tokenizer
        self.beams = beams
        self.length_penalty = float(length_penalty)
        self.detokenizer = IncrementalDetokenizer(tokenizer)
        pad = getattr(tokenizer, "pad_token_id", None)
        self.pad_token_id = int(pad) if pad is not None else 0

    def generate(self, prompt: str | Sequence[int], config: GenerationConfig) -> GenerationResult:
        """One prompt's beam search."""
        return next(iter(self.generate_many([prompt], config, batch_size=self.beams)))[1]

    def generate_many(
        self,
        prompts: Iterable[str | Sequence[int]],
        config: GenerationConfig,
        batch_size: int = 8,
    ) -> Iterator[tuple[int, GenerationResult]]:
        """Search every prompt; yield ``(index in prompts, result)`` as each search ends.

        ``batch_size`` rows are shared by ``batch_size // beams`` searches at a time (at least
        one), so a batch of 16 runs 8 prompts with 2 beams each.
        """
        for index, results in self.search_many(prompts, config, batch_size):
            yield index, results[0]

    @torch.inference_mode()
    def search_many(
        self,
        prompts: Iterable[str | Sequence[int]],
        config: GenerationConfig,
        batch_size: int = 8,
    ) -> Iterator[tuple[int, list[GenerationResult]]]:
        """:meth:`generate_many`, yielding every finished hypothesis of a search (up to
        ``beams`` of them), best score first, instead of the best alone: what a filter over
        the final beams needs. They share the search's ``counts`` (forward passes, wall
        time: one search found them all)."""
        if config.bans() is not None:
            raise ValueError("beam search cannot enforce banned strings")
        eos = eos_ids_for(self.backend, self.tokenizer, config)
        width = max(1, batch_size // self.beams)
        batch = self.backend.new_batch(
            width * self.beams,
            pad_token_id=self.pad_token_id,
            compact_fraction=0.25,
            min_compact=16,
        )
        groups = [list(range(g * self.beams, (g + 1) * self.beams)) for g in range(width)]
        todo = iter(enumerate(prompts))
        live: list[_Search | None] = [None] * width
        exhausted = False
        while True:
            # Admit new prompts into free groups of rows, prefilled together.
            fresh: list[_Search] = []
            for g, search in enumerate(live):
                if search is None and not exhausted:
                    item = next(todo, None)
                    if item is None:
                        exhausted = True
                        break
                    ids = encode_prompt(self.tokenizer, item[1])
                    live[g] = _Search(item[0], ids, groups[g], [_Beam(groups[g][0], [], [], 0.0)])
                    fresh.append(live[g])
            if fresh:
                # Their first step comes from the prefill's logits.
                started = time.perf_counter()
                logits = batch.admit([s.slots[0] for s in fresh], [s.prompt_ids for s in fresh])
                for i, search in enumerate(fresh):
                    search.started = started
                    self._advance(search, logits[i : i + 1], eos, config, batch)
                yield from self._retire(live, batch)
            if not any(live):
                if exhausted:
                    return
                continue
            batch.maintain()
            feed: list[int | None] = [None] * (width * self.beams)
            for search in live:
                if search is not None:
                    for beam in search.beams:
                        feed[beam.slot] = beam.tokens[-1]
                        search.forward_passes += 1
            logits = batch.step(feed)
            fed = [slot for slot, token in enumerate(feed) if token is not None]
            logits_of = dict(zip(fed, logits, strict=True))
            for search in live:
                if search is not None:
                    rows = torch.stack([logits_of[b.slot] for b in search.beams])
                    self._advance(search, rows, eos, config, batch)
            yield from self._retire(live, batch)

    def _retire(
        self, live: list[_Search | None], batch: BatchState
    ) -> Iterator[tuple[int, list[GenerationResult]]]:
        """Free the rows of every finished search and yield its result."""
        for g, search in enumerate(live):
            if search is not None and search.done:
                for slot in search.slots:
                    batch.free(slot)
                live[g] = None
                yield search.index, self._results(search)

    # ------------------------------------------------------------------ one step
    def _advance(
        self,
        search: _Search,
        logits: torch.Tensor,
        eos: frozenset[int],
        config: GenerationConfig,
        batch: BatchState,
    ) -> None:
        """One step of one search, given its running beams' logits ``[beams, V]``."""
        n = self.beams
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        totals = logprobs + torch.tensor([b.score for b in search.beams])[:, None]
        vocab = totals.shape[1]
        k = min(max(2, 1 + len(eos)) * n, totals.numel())
        scores, flat = torch.topk(totals.reshape(-1), k)
        running: list[tuple[int, _Beam]] = []  # (parent index, child)
        finished = list(search.finished)
        all_stop = True
        for rank, (score, index) in enumerate(zip(scores.tolist(), flat.tolist(), strict=True)):
            parent_index, token = divmod(index, vocab)
            parent = search.beams[parent_index]
            tokens = [*parent.tokens, token]
            piece, detok = self.detokenizer.next_piece(tokens, parent.detok)
            text = parent.text + piece
            hit = find_stop(text, len(parent.text), config.stop) if config.stop else None
            if token in eos:
                reason = "eos"
            elif hit is not None:
                reason = "stop_string"
            elif len(tokens) >= config.max_new_tokens:
                reason = "max_new_tokens"
            else:
                reason = None
            logprob = float(logprobs[parent_index, token])
            if reason is None:
                all_stop = False
                if len(running) < n:
                    child = _Beam(-1, tokens, [*parent.logprobs, logprob], score, text, detok)
                    running.append((parent_index, child))
            elif rank < n and len(search.finished) < n:
                finished.append(
                    _Hypothesis(
                        score / len(tokens) ** self.length_penalty,
                        tokens,
                        [*parent.logprobs, logprob],
                        text,
                        reason,
                        hit[1] if hit is not None and reason == "stop_string" else None,
                    )
                )
        # The best n hypotheses (a stable sort: earlier ones win ties, as topk's order does).
        search.finished = sorted(finished, key=lambda h: -h.score)[:n]
        if len(search.finished) >= n or all_stop or not running:
            search.done = True
            return
        self._place(search, running, batch)

    @staticmethod
    def _place(search: _Search, running: list[tuple[int, _Beam]], batch: BatchState) -> None:
        """Give each new beam a row: a parent's first child keeps the parent's row, a second
        child gets a copy of it in a row no beam needs any more."""
        kept: set[int] = set()
        for parent_index, child in running:
            if parent_index not in kept:
                kept.add(parent_index)
                child.slot = search.beams[parent_index].slot
        taken = {child.slot for _, child in running if child.slot >= 0}
        spare = [slot for slot in search.slots if slot not in taken]
        for parent_index, child in running:
            if child.slot < 0:
                child.slot = spare.pop(0)
                batch.copy_row(search.beams[parent_index].slot, child.slot)
        for slot in spare:
            if any(beam.slot == slot for beam in search.beams):
                batch.free(slot)  # a beam that left no child
        search.beams = [child for _, child in running]

    def _results(self, search: _Search) -> list[GenerationResult]:
        """Every finished hypothesis as a result, best first; each has its own
        ``tokens_sampled`` (its length) and the search's forward passes and wall time."""
        wall = time.perf_counter() - search.started
        results = []
        for hypothesis in search.finished:
            text = hypothesis.text
            if hypothesis.stop_string is not None:
                hit = find_stop(text, 0, [hypothesis.stop_string])
                text = text[: hit[0]] if hit is not None else text
            counts = Counts(
                forward_passes=search.forward_passes,
                tokens_sampled=len(hypothesis.tokens),
                wall_time_s=wall,
            )
            results.append(
                GenerationResult(
                    prompt_token_ids=list(search.prompt_ids),
                    token_ids=hypothesis.tokens,
                    logprobs=hypothesis.logprobs,
                    text=text,
                    finish_reason=hypothesis.finish_reason,  # type: ignore[arg-type]
                    stop_string=hypothesis.stop_string,
                    trace=[],
                    counts=counts,
                )
            )
        return results
