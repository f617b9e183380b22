"""Rendering: the tokenizer prepare uses (the model's, or one trained on the training split, streamed), each
document's training text in its format (plain text, prompt + completion, a chat template) with the character spans
completion-only loss learns, and the BLEU prompt/reference pairs of the held-out documents. No torch here.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path

from gptops.pipeline import models
from gptops.pipeline.config import PrepareConfig
from gptops.pipeline.data.cleaning import column_batches
from gptops.pipeline.errors import PipelineError

log = logging.getLogger(__name__)


def load_tokenizer(config: PrepareConfig, train_keys: Iterable[str], documents: int):
    """The starting model's tokenizer, or (scratch) a byte-level BPE trained on `train_keys`, read as they come."""
    source = config.model
    if source.is_scratch:
        log.info("Training tokenizer vocabSize=%d documents=%d", source.vocab_size, documents)
        return models.train_tokenizer(train_keys, source.vocab_size, source.context_length)
    path = models.resolve_model_dir(source, config.artifact_root / "cache")
    try:
        return models.load_tokenizer(path, **models.hub_kwargs(source))
    except (OSError, ValueError) as e:
        raise PipelineError(f"{source.describe()}: cannot load the model's tokenizer ({e})") from e


class Renderer:
    """Batched: the `text` a document trains on (format-specific), what BLEU prompts with and expects, and `_spans`:
    the [start, end) character ranges of `text` that completion-only loss learns (all after the prompt; each assistant
    turn with the template's end-of-turn marker)."""

    def __init__(self, config: PrepareConfig, tokenizer):
        self.format = config.format
        self.tokenizer = tokenizer

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        if self.format == "text":
            texts = batch["text"]
            return {"text": texts, "_prompt": [None] * len(texts), "_reference": [None] * len(texts),
                    "_spans": [[] for _ in texts]}
        if self.format == "prompt-completion":
            texts = [join_prompt_completion(p, c) for p, c in zip(batch["prompt"], batch["completion"], strict=True)]
            # The completion with the space the join put before it: generation from the bare prompt must write it too.
            spans = [[[len(p), len(t)]] for t, p in zip(texts, batch["prompt"], strict=True)]
            return {"text": texts, "_prompt": batch["prompt"], "_reference": batch["completion"], "_spans": spans}
        texts, prompts, refs, spans = [], [], [], []
        for messages in batch["messages"]:
            text = self.tokenizer.apply_chat_template(messages, tokenize=False)
            texts.append(text)
            spans.append(self._assistant_spans(messages, text))
            if messages[-1]["role"] == "assistant" and len(messages) > 1:
                prompts.append(self.tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True))
                refs.append(messages[-1]["content"])
            else:
                prompts.append(None)
                refs.append(None)
        return {"text": texts, "_prompt": prompts, "_reference": refs, "_spans": spans}

    def _assistant_spans(self, messages: list[dict[str, str]], text: str) -> list[list[int]]:
        """Each assistant turn as what the template adds after the generation prompt: the content and its end-of-turn
        marker (so the model learns to stop). A template whose renderings are not prefixes of each other (one that
        rewrites earlier turns) falls back to the content alone, found in order."""
        render = self.tokenizer.apply_chat_template
        spans: list[list[int]] = []
        search_from = 0
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            try:
                before = render(messages[:i], tokenize=False, add_generation_prompt=True) if i else ""
                through = render(messages[: i + 1], tokenize=False)
            except Exception:  # a template that refuses a partial conversation (e.g. one that must end with a user)
                before, through = "", None
            # Whitespace the template puts after the end-of-turn marker is not learned: it is also what precedes the
            # next turn, and learning "newline -> end of document" teaches the model to answer with nothing.
            end = len(through.rstrip()) if through is not None else 0
            if through is not None and text.startswith(through) and through.startswith(before) \
                    and end > len(before) and len(before) >= search_from:
                spans.append([len(before), end])
                search_from = len(through)
                continue
            start = text.find(message["content"], search_from)
            if start >= 0 and message["content"]:
                spans.append([start, start + len(message["content"])])
                search_from = start + len(message["content"])
        return spans


def join_prompt_completion(prompt: str, completion: str) -> str:
    if not prompt or not completion or prompt[-1].isspace() or completion[0].isspace():
        return prompt + completion
    return prompt + " " + completion


def write_eval_pairs(validation, config: PrepareConfig, path: Path) -> int:
    """BLEU pairs from held-out documents, written as JSONL a batch at a time: the format's prompt/reference, or a
    text document's two halves. Returns how many."""
    count = 0
    with open(path, "w", encoding="utf-8") as f:
        for prompt, reference in _eval_pairs(validation, config):
            f.write(json.dumps({"prompt": prompt, "reference": reference}, ensure_ascii=False) + "\n")
            count += 1
    return count


def _eval_pairs(validation, config: PrepareConfig) -> Iterable[tuple[str, str]]:
    if config.format == "text":
        for texts in column_batches(validation, "text"):
            for text in texts:
                words = text.split()
                if len(words) >= 2:
                    half = len(words) // 2
                    yield " ".join(words[:half]), " ".join(words[half:])
        return
    for prompts, references in zip(column_batches(validation, "_prompt"), column_batches(validation, "_reference"),
                                   strict=True):
        for prompt, reference in zip(prompts, references, strict=True):
            if prompt is not None and reference and reference.strip():
                yield prompt, reference.strip()
