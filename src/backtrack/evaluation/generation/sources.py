"""Where completions come from: the engine (one sequence or batched) and the transformers
baselines (``model.generate`` beam search and sampling), behind one :class:`CompletionSource`.

``beam:N`` runs transformers' ``model.generate`` on the transformers backend (the peer a user
there would pick, one sequence at a time) and the engine's batched beam search
(:mod:`backtrack.engine.beam`, the same algorithm) on other backends, which have none.
The baselines that filter candidates by the prompt's visible examples (``sample-filter:n=N``,
``beam:N+filter``) always run on the engine: :mod:`~backtrack.evaluation.generation.filtering`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, fields, replace
from typing import Any

from backtrack.engine.prompt import eos_ids_for
from backtrack.evaluation.cells import Generated, WorkItem
from backtrack.evaluation.data import Problem
from backtrack.evaluation.prompts import build_prompt
from backtrack.evaluation.settings import EvalError, EvalSettings


def load_model_for(settings: EvalSettings):
    """``(model, tokenizer)`` as an evaluation's settings ask (model, dtype, device, backend,
    quantization, llama.cpp's threads and context): the one loader of ``backtrack eval``, the
    local runner and every Ray actor. A model that cannot load is an :class:`EvalError`."""
    from backtrack.models import ModelLoadError, load_model

    try:
        return load_model(settings.model, **settings.loading())
    except (ModelLoadError, ValueError, TypeError) as exc:
        raise EvalError(str(exc)) from exc


def _from_result(result) -> Generated:
    """The record of one engine result: its text, finish and length, and each work count
    Generated keeps (the fields it shares with the result's ``Counts``, by name)."""
    counts = asdict(result.counts)
    kept = {f.name: counts[f.name] for f in fields(Generated) if f.name in counts}
    return Generated(
        raw=result.text,
        finish_reason=result.finish_reason,
        final_tokens=len(result.token_ids),
        **kept,
    )


class CompletionSource:
    """Decodes work items with the engine (single or batched) or transformers' ``generate``."""

    def __init__(self, model, tokenizer, settings: EvalSettings) -> None:
        from backtrack.engine import Decoder

        self.model, self.tokenizer, self.settings = model, tokenizer, settings
        self.stop = settings.generation.stop
        self.decoder = Decoder(model, tokenizer)
        self._batch = None
        # transformers has its own beam search (the reference peer); other backends use ours.
        from backtrack.backends.base import as_backend

        self.engine_beams = as_backend(model).name != "transformers"
        self._prompts: dict[str, str] = {}

    def prompt(self, problem: Problem) -> str:
        if problem.task_id not in self._prompts:
            self._prompts[problem.task_id] = build_prompt(
                problem, self.settings.mode, self.tokenizer
            )
        return self._prompts[problem.task_id]

    def engine_config(self, item: WorkItem):
        """The evaluation's generation settings, with the configuration's own changes and
        this cell's seed."""
        config = item.config.generation_config(self.settings.generation)
        return replace(config, seed=item.seed)

    def batched(self, item: WorkItem) -> bool:
        """Whether :meth:`engine` decodes ``item`` (else :meth:`hf` does)."""
        kind = item.config.kind
        return kind == "engine" or item.config.filtered or (kind == "beam" and self.engine_beams)

    def batch_decoder(self):
        """The one :class:`~backtrack.engine.batch.BatchDecoder` of this source."""
        from backtrack.engine.batch import BatchDecoder

        if self._batch is None:
            self._batch = BatchDecoder(self.model, self.tokenizer)
        return self._batch

    def engine(self, items: Sequence[WorkItem]) -> Iterator[tuple[WorkItem, Generated]]:
        """Decode engine items: batched through BatchDecoder when batch_size > 1, beam search
        items (on backends other than transformers) through BeamSearchDecoder.

        Every item gets a fresh operator instance (operators carry per-generation state).
        The filtering baselines (``sample-filter:n=N``, ``beam:N+filter``) are decoded by
        :mod:`~backtrack.evaluation.generation.filtering`.
        """
        from backtrack.evaluation.generation import filtering
        from backtrack.operators import parse_operator

        kinds = ("beam", "beam-filter", "sample-filter")
        yield from self._beam_search([i for i in items if i.config.kind == "beam"])
        yield from filtering.beam_filter(self, [i for i in items if i.config.kind == kinds[1]])
        yield from filtering.sample_filter(self, [i for i in items if i.config.kind == kinds[2]])
        items = [i for i in items if i.config.kind not in kinds]
        if not items:
            return
        if self.settings.batch_size <= 1:
            for item in items:
                op = parse_operator(item.config.spec)
                config = self.engine_config(item)
                result = self.decoder.generate(self.prompt(item.problem), op, config)
                yield item, _from_result(result)
            return
        requests = [
            (self.prompt(i.problem), parse_operator(i.config.spec), self.engine_config(i))
            for i in items
        ]
        for index, result in self.batch_decoder().generate_many(requests, self.settings.batch_size):
            yield items[index], _from_result(result)

    def beam_groups(self, items: Sequence[WorkItem]) -> Iterator[tuple[list[WorkItem], Any, dict]]:
        """Beam items grouped by width, each group with its ``BeamSearchDecoder`` and the
        keyword arguments of its search (prompts, config, batch size: ``batch_size`` rows hold
        ``batch_size // N`` prompts of N beams). ``beam:N`` and ``beam:N+filter`` both use it."""
        from backtrack.engine.beam import BeamSearchDecoder

        for width in dict.fromkeys(i.config.beams for i in items):
            group = [i for i in items if i.config.beams == width]
            decoder = BeamSearchDecoder(self.model, self.tokenizer, beams=width)
            search = {
                "prompts": [self.prompt(i.problem) for i in group],
                "config": self.engine_config(group[0]),
                "batch_size": max(self.settings.batch_size, width),
            }
            yield group, decoder, search

    def _beam_search(self, items: Sequence[WorkItem]) -> Iterator[tuple[WorkItem, Generated]]:
        """Beam search items, each width's together (:meth:`beam_groups`)."""
        for group, decoder, search in self.beam_groups(items):
            for index, result in decoder.generate_many(**search):
                yield group[index], replace(_from_result(result), rows=decoder.beams)

    def hf(self, item: WorkItem) -> Generated:
        """Plain transformers decoding (beam search or sampling), stop strings post-hoc."""
        import torch

        s, tok = self.settings.generation, self.tokenizer
        enc = tok(self.prompt(item.problem), return_tensors="pt", add_special_tokens=False)
        device = next(self.model.parameters()).device
        enc = {k: v.to(device) for k, v in enc.items()}
        kwargs: dict[str, Any] = {"max_new_tokens": s.max_new_tokens}
        if item.config.kind == "beam":
            kwargs.update(num_beams=item.config.beams, do_sample=False, early_stopping=True)
        elif s.temperature == 0:  # transformers rejects sampling at temperature 0: greedy
            kwargs.update(do_sample=False)
        else:
            kwargs.update(do_sample=True, temperature=s.temperature, top_k=s.top_k or 0)
            kwargs["top_p"] = s.top_p if s.top_p is not None else 1.0
            if s.min_p is not None:
                kwargs["min_p"] = s.min_p
        if self.stop:
            kwargs.update(stop_strings=list(self.stop), tokenizer=tok)
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        torch.manual_seed(item.seed)
        start = time.perf_counter()
        with torch.inference_mode():
            out = self.model.generate(**enc, pad_token_id=pad, **kwargs)
        wall = time.perf_counter() - start
        new = out[0, enc["input_ids"].shape[1] :].tolist()
        eos = eos_ids_for(self.model, tok, s)
        cut = next((j + 1 for j, t in enumerate(new) if t in eos), len(new))
        ids = new[:cut]
        raw = tok.decode(ids, skip_special_tokens=True)
        finish = "eos" if cut < len(new) or (ids and ids[-1] in eos) else "max_new_tokens"
        if any(st in raw for st in self.stop):
            finish = "stop_string"
        return Generated(raw, finish, len(ids), len(ids), len(ids), 0, 0, wall, rows=None)
