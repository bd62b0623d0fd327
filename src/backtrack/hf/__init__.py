"""Backtracking inside transformers' ``model.generate``: ``custom_generate=backtrack.hf.generate``.

transformers 5 lets ``model.generate(..., custom_generate=FUNCTION)`` replace the decoding loop:
it prepares the inputs and its generation config as usual, then hands them to ``FUNCTION``.
:func:`generate` is that function; it decodes every row with the engine (exact rollback, the
same sampling as ``model.generate``), so with no operator it returns token for token what
``model.generate`` returns::

    out = model.generate(**inputs, custom_generate=backtrack.hf.generate,
                         operator="probability-trend", do_sample=True, temperature=0.5,
                         max_new_tokens=128)

What comes from where:

* transformers' own arguments (``max_new_tokens``/``max_length``, ``do_sample``,
  ``temperature``, ``top_k``, ``top_p``, ``min_p``, ``repetition_penalty``, ``eos_token_id``,
  ``pad_token_id``, ``return_dict_in_generate``, ``num_return_sequences``, ``streamer``) are
  honoured; any other setting that would change what is drawn (``num_beams``, ``output_scores``,
  ``no_repeat_ngram_size``, a ``logits_processor``, ...) is refused with a one-line error
  naming it, before anything is decoded;
* the operator (``operator=``: a spec string or an :class:`~backtrack.operators.Operator`) and
  the settings transformers does not have are keyword arguments named as in
  :class:`~backtrack.engine.settings.GenerationConfig` (:data:`BACKTRACK_SETTINGS`: ``period``,
  ``ban``, ``rollback_window``, ``stop``, ``banned_strings``, ``max_backtracks``, ...);
  ``seed=`` draws from a generator of its own (otherwise from torch's global stream, as
  ``model.generate`` does).

Text is needed only for stop strings, banned strings, DRY and operators that read text
(``Operator.reads_text``); everything else decodes from input ids alone, like
``model.generate``. transformers does not hand a ``tokenizer=`` on to a custom_generate
*callable* (it keeps the callable's own keyword arguments only), so where text is needed,
bind it: ``custom_generate=functools.partial(backtrack.hf.generate, tokenizer=tokenizer)``.
The ``custom_generate`` directory (``hub/`` in the repository, for a local path or the Hub)
receives ``tokenizer=`` and ``streamer=`` directly and binds them itself
(:func:`generate_from_arguments`).

A ``streamer`` gets the prompt, then only tokens no rollback can delete any more (as
:meth:`~backtrack.engine.decoder.Decoder.stream_text`: with no ``rollback_window``, a window of
:data:`~backtrack.engine.decoder.INTERACTIVE_ROLLBACK_WINDOW` tokens), then ``end()``.

Batches: every row is decoded on its own (its prompt without the left padding), one after the
other, and padded on the right as ``model.generate`` pads finished rows. Greedy rows equal
``model.generate`` on each prompt alone; sampled rows draw one after the other from one
stream, so they are not the draws a batched ``model.generate`` would make.
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass, replace
from typing import Any

import torch
from transformers import GenerationConfig as HFGenerationConfig
from transformers.generation import GenerateDecoderOnlyOutput, GenerationMixin

from backtrack.engine.decoder import INTERACTIVE_ROLLBACK_WINDOW
from backtrack.engine.results import GenerationResult
from backtrack.engine.session import DecodingSession
from backtrack.engine.settings import GenerationConfig
from backtrack.hf.arguments import (
    BACKTRACK_SETTINGS,
    NoTokenizer,
    engine_config,
    needs_text,
    prompts_of,
    refuse_unsupported,
    with_settings_in_signature,
)
from backtrack.operators.spec import parse_operator

__all__ = ["BACKTRACK_SETTINGS", "BacktrackGenerateOutput", "generate", "generate_from_arguments"]


@dataclass
class BacktrackGenerateOutput(GenerateDecoderOnlyOutput):
    """``model.generate``'s output with ``return_dict_in_generate=True``, plus each row's
    :class:`~backtrack.engine.results.GenerationResult` (text, trace of tokens and rollbacks,
    counts) in ``results``."""

    results: list[GenerationResult] | None = None


def generate(
    model: Any,
    input_ids: torch.Tensor,
    logits_processor: Any = None,
    stopping_criteria: Any = None,
    generation_config: HFGenerationConfig | None = None,
    *,
    tokenizer: Any = None,
    streamer: Any = None,
    operator: Any = None,
    seed: int | None = None,
    **model_kwargs: Any,
) -> torch.Tensor | BacktrackGenerateOutput:
    """The decoding loop of ``model.generate(..., custom_generate=backtrack.hf.generate)``.

    transformers calls it with the prepared ``input_ids``, logits processors, stopping criteria,
    generation config and model inputs; the backtracking settings (:data:`BACKTRACK_SETTINGS`)
    arrive as keyword arguments. Returns what ``model.generate`` returns: the sequences
    (prompt and completion, right-padded), or with ``return_dict_in_generate`` a
    :class:`BacktrackGenerateOutput`.

    Args:
        tokenizer: needed only where text is (stop strings, banned strings, DRY, an operator
            that reads text); bind it with ``functools.partial`` (see the module docstring).
        streamer: a transformers streamer (``model.generate``'s own ``streamer=`` is picked
            up too): it receives the prompt, then tokens as they become final, then ``end()``.
        operator: an operator or its spec string (``None``: plain decoding).
        seed: draw from a ``torch.Generator`` seeded with it (the same draws as
            ``torch.manual_seed(seed)`` before the call); ``None``: torch's global stream.
    """
    handed = _streamer_given_to_transformers()
    if streamer is None:
        streamer = handed
    try:
        settings = {key: model_kwargs.pop(key) for key in BACKTRACK_SETTINGS if key in model_kwargs}
        plan = _Plan.make(
            model, input_ids, logits_processor, stopping_criteria, generation_config,
            tokenizer, streamer, operator, seed, settings, model_kwargs,
        )  # fmt: skip
    except Exception:
        if streamer is not None and streamer is handed:  # it holds the prompt: release it
            streamer.end()
        raise
    return plan.run(input_ids, prompt_given=streamer is not None and streamer is handed)


def generate_from_arguments(model: Any, *args: Any, **arguments: Any) -> Any:
    """``model.generate``'s own arguments, as a ``custom_generate/generate.py`` receives them
    (from a local directory or the Hub): bind ``tokenizer``, ``streamer`` and transformers'
    ``stop_strings`` (as ``stop``) to :func:`generate`, and let transformers prepare the rest.

    The streamer is not given to transformers, so it gets the prompt from :func:`generate`
    once. ``GenerationMixin.generate`` is called directly: a model loaded with this
    ``custom_generate`` has it as its ``generate``.
    """
    tokenizer = arguments.pop("tokenizer", None)
    streamer = arguments.pop("streamer", None)
    stop_strings = arguments.pop("stop_strings", None)
    if stop_strings is not None:
        if arguments.get("stop") is not None:
            raise ValueError("give either stop_strings or stop, not both")
        arguments["stop"] = [stop_strings] if isinstance(stop_strings, str) else stop_strings
    bound = functools.partial(generate, tokenizer=tokenizer, streamer=streamer)
    return GenerationMixin.generate(model, *args, custom_generate=bound, **arguments)


def _streamer_given_to_transformers() -> Any:
    """The ``streamer=`` that ``model.generate`` received, or ``None``.

    transformers (5.x) gives it the prompt but does not pass it on to a custom_generate
    callable (only the callable's own keyword arguments are passed), so a ``TextStreamer``
    would show the prompt alone and a ``TextIteratorStreamer`` would wait forever. It is read
    from the frame of transformers' ``generate`` that called :func:`generate` (directly or
    through ``functools.partial``); from anywhere else there is none.
    """
    frame = sys._getframe(2)  # this helper <- generate() <- its caller
    if (
        frame.f_code.co_name == "generate"
        and frame.f_globals.get("__name__") == "transformers.generation.utils"
    ):
        return frame.f_locals.get("streamer")
    return None


@dataclass
class _Plan:
    """A call checked in full before anything is decoded: the rows, the engine's settings."""

    model: Any
    tokenizer: Any
    config: GenerationConfig
    operator: Any
    generator: torch.Generator | None
    streamer: Any
    prompts: list[list[int]]
    pad_token_id: int
    return_dict: bool

    @classmethod
    def make(
        cls,
        model: Any,
        input_ids: torch.Tensor,
        logits_processor: Any,
        stopping_criteria: Any,
        hf: HFGenerationConfig | None,
        tokenizer: Any,
        streamer: Any,
        operator: Any,
        seed: int | None,
        settings: dict[str, Any],
        model_kwargs: dict[str, Any],
    ) -> _Plan:
        if hf is None:
            raise TypeError(
                "backtrack.hf.generate is transformers' decoding loop: call "
                "model.generate(..., custom_generate=backtrack.hf.generate)"
            )
        if getattr(model.config, "is_encoder_decoder", False):
            raise ValueError("backtrack.hf.generate decodes causal LMs, not encoder-decoders")
        refuse_unsupported(hf, logits_processor, stopping_criteria, model_kwargs)
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [batch, length], got {tuple(input_ids.shape)}")
        prompts = prompts_of(input_ids, model_kwargs.get("attention_mask"))
        if streamer is not None and len(prompts) > 1:
            raise ValueError(f"a streamer takes one row; this call has {len(prompts)}")
        config = engine_config(hf, input_ids.shape[1], settings)
        if streamer is not None and config.rollback_window is None:
            config = replace(config, rollback_window=INTERACTIVE_ROLLBACK_WINDOW)
        op = parse_operator(operator) if operator is not None else None
        needs = needs_text(config, op)
        if needs and tokenizer is None:
            raise ValueError(
                f"{needs} needs the tokenizer, and transformers does not pass tokenizer= on to "
                "a custom_generate function: use custom_generate=functools.partial("
                "backtrack.hf.generate, tokenizer=tokenizer)"
            )
        if tokenizer is None:
            tokenizer = NoTokenizer(model.config.get_text_config().vocab_size)
        generator = None
        if seed is not None:
            generator = torch.Generator(device=model.device).manual_seed(int(seed))
        eos = list(config.eos_token_ids or ())
        pad = hf.pad_token_id if hf.pad_token_id is not None else (eos[0] if eos else 0)
        return cls(
            model, tokenizer, config, op, generator, streamer, prompts, int(pad),
            bool(hf.return_dict_in_generate),
        )  # fmt: skip

    def run(self, input_ids: torch.Tensor, prompt_given: bool) -> Any:
        results = []
        for prompt in self.prompts:
            session = DecodingSession.for_prompt(
                self.model, self.tokenizer, prompt, self.operator, self.config,
                generator=self.generator,
            )  # fmt: skip
            if self.streamer is None:
                for _ in session.run():
                    pass
            else:
                _stream(session, self.streamer, input_ids, prompt_given)
            results.append(session.result())
        width = max(len(r.token_ids) for r in results)
        rows = [
            row + r.token_ids + [self.pad_token_id] * (width - len(r.token_ids))
            for row, r in zip(input_ids.tolist(), results, strict=True)
        ]
        sequences = torch.tensor(rows, dtype=input_ids.dtype, device=input_ids.device)
        if self.return_dict:
            return BacktrackGenerateOutput(sequences=sequences, results=results)
        return sequences


def _stream(session: DecodingSession, streamer: Any, input_ids: torch.Tensor, given: bool) -> None:
    """Decode ``session``, handing ``streamer`` each token once no rollback can delete it."""
    if not given:
        streamer.put(input_ids.cpu())
    sent = 0
    try:
        for _ in session.run():
            final = session.committed_length()
            if final > sent:
                streamer.put(torch.tensor(session.completion[sent:final]))
                sent = final
        if len(session.completion) > sent:
            streamer.put(torch.tensor(session.completion[sent:]))
    finally:
        streamer.end()


with_settings_in_signature(generate)
