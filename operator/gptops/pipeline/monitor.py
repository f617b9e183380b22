"""The monitor stage: live evaluation of a served model through its OpenAI-compatible endpoint, and input drift.

Perplexity comes from the prompt log-probabilities the server returns for `echo=True, logprobs=1, max_tokens=1` on
/v1/completions (vLLM does; a server that ignores them, like `transformers serve`, leaves perplexity unmeasured), BLEU
from greedy completions against the references (any server). Input drift: the population stability index of the
prompt lengths vLLM saw since the last run (its `vllm:request_prompt_tokens` histogram, read from each Pod's /metrics)
against the prompt lengths of the dataset, as the server counted them. The stage measures; whether that is a drift
is the operator's decision (reconcile/monitoring.py), against the numbers the revision was promoted with.
No torch here: the monitor Job needs only HTTP.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from gptops.api.stageresult import StageResult
from gptops.pipeline.config import DataSource, ModelSource, PrepareConfig
from gptops.pipeline.errors import PipelineError

log = logging.getLogger(__name__)

ProgressFn = Callable[[str, dict[str, Any]], None]
#: vLLM's histogram of prompt lengths per request (tokens), with these buckets' `le` label.
PROMPT_TOKENS_HISTOGRAM = "vllm:request_prompt_tokens"
#: Proportions below this count as this in the PSI (an empty bin would make it infinite).
PSI_FLOOR = 1e-4
API_KEY_ENV = "VLLM_API_KEY"
Snapshot = dict[str, dict[str, float]]
"""/metrics URL -> the histogram's cumulative bucket counts by `le` (summed over its other labels)."""


@dataclass
class MonitorConfig:
    """One live evaluation of a served model."""

    endpoint: str
    """The OpenAI-compatible base URL, http://<host>:<port>/v1."""
    served_name: str
    """The model id the server expects (the GPTModel's name)."""
    source: DataSource
    """The held-out dataset."""
    format: str = "prompt-completion"
    """text, chat or prompt-completion (as FineTuneJob.spec.dataset.format)."""
    file_format: str = "auto"
    """How to parse the files: auto (by suffix), text, jsonl, json, csv or parquet."""
    fields: dict[str, str] = field(default_factory=dict)
    """Field names: text, messages, prompt, completion (camelCase spec names)."""
    metrics: list[str] = field(default_factory=lambda: ["perplexity", "bleu"])
    """perplexity and/or bleu."""
    max_samples: int = 64
    """Records used (the first ones)."""
    max_new_tokens: int = 64
    """Tokens generated per BLEU prompt."""
    metrics_urls: list[str] = field(default_factory=list)
    """The vLLM Pods' /metrics; none: input drift is not measured."""
    state_dir: Path | None = None
    """Where each run leaves the histogram as it found it after its own requests, for the next run's "since"."""
    run_name: str = "run"
    """This run's snapshot file name in state_dir (the monitor Job's name)."""
    min_requests: int = 20
    """Live requests needed since the last run for a PSI."""
    work_dir: Path = Path("/tmp/gptops-monitor")
    """Downloads of url and s3 datasets."""
    timeout: float = 300.0
    """Seconds per HTTP request."""

    def __post_init__(self) -> None:
        if self.format not in ("text", "chat", "prompt-completion"):
            raise ValueError(f"monitoring.dataset.format: expected text, chat or prompt-completion, got {self.format!r}")
        unknown = set(self.metrics) - {"perplexity", "bleu"}
        if unknown or not self.metrics:
            raise ValueError(f"monitoring.metrics: expected perplexity and/or bleu, got {self.metrics!r}")
        if "bleu" in self.metrics and self.format == "text":
            raise ValueError("monitoring.metrics: bleu needs prompt/reference pairs: dataset.format chat or "
                             "prompt-completion")
        if not self.endpoint.startswith(("http://", "https://")):
            raise ValueError(f"endpoint: expected an http(s) URL, got {self.endpoint!r}")


@dataclass
class MonitorReport:
    """What one run measured."""

    live: dict[str, float]
    """perplexity, bleu: what could be measured."""
    input_psi: float | None
    live_requests: int | None
    """Requests the vLLM Pods served since the last run (None: not read)."""
    samples: int
    notes: list[str]
    seconds: float

    def result(self) -> StageResult:
        parts = [f"{k} {v:.4g}" for k, v in sorted(self.live.items())]
        if self.input_psi is not None:
            parts.append(f"input PSI {self.input_psi:.4g} over {self.live_requests} live requests")
        message = "live: " + (", ".join(parts) or "nothing measured") + "".join(f"; {n}" for n in self.notes)
        metrics: dict[str, float] = {**self.live, "samples": self.samples}
        if self.input_psi is not None:
            metrics["inputPsi"] = round(self.input_psi, 6)
        if self.live_requests is not None:
            metrics["liveRequests"] = self.live_requests
        return StageResult(stage="monitor", ok=True, message=message, metrics=metrics)


@dataclass
class _Sample:
    prompt: str | None = None
    """What BLEU prompts with (prompt-completion)."""
    messages: list[dict[str, str]] | None = None
    """What BLEU sends as a chat (chat)."""
    reference: str | None = None
    text: str | None = None
    """What perplexity scores (text, prompt-completion)."""
    scored_from: int = 0
    """Perplexity counts the tokens of `text` from this character on (the completion of a prompt-completion)."""


def run(config: MonitorConfig, progress: ProgressFn | None = None) -> MonitorReport:
    """Evaluate the live endpoint on the held-out data and read the input drift."""
    started = time.monotonic()
    say = progress or (lambda event, fields: None)
    samples = load_samples(config)
    say("loaded", {"samples": len(samples)})
    notes: list[str] = []
    headers = {"Authorization": f"Bearer {os.environ[API_KEY_ENV]}"} if os.environ.get(API_KEY_ENV) else {}
    with httpx.Client(timeout=config.timeout, headers=headers) as client:
        # The histogram before this run's own requests: what live traffic alone did since the last run.
        before = scrape(client, config.metrics_urls, notes)
        live: dict[str, float] = {}
        prompt_lengths: list[int] = []
        if "perplexity" in config.metrics:
            ppl, lengths = live_perplexity(client, config, samples)
            if ppl is None:
                notes.append("perplexity not measured: the server returned no prompt log-probabilities "
                             "(vLLM's completions API does)" if samples_with_text(samples) else
                             "perplexity not measured: chat records have no plain text to score")
            else:
                live["perplexity"] = round(ppl, 4)
                say("perplexity", {"perplexity": ppl})
            if config.format == "text":
                prompt_lengths = lengths
        if "bleu" in config.metrics:
            bleu, lengths = live_bleu(client, config, samples)
            live["bleu"] = round(bleu, 3)
            prompt_lengths = lengths
            say("bleu", {"bleu": bleu})
        after = scrape(client, config.metrics_urls, notes) if config.metrics_urls else {}
    psi, requests = None, None
    if config.metrics_urls and before:
        previous = _previous_snapshot(config)
        counts, bounds = live_counts(before, previous)
        requests = int(sum(counts))
        if requests < config.min_requests:
            notes.append(f"input drift not judged: {requests} live requests since the last run, fewer than "
                         f"{config.min_requests}")
        elif not prompt_lengths:
            notes.append("input drift not judged: the server reported no prompt lengths (usage.prompt_tokens)")
        else:
            psi = population_stability_index(counts, bin_counts(prompt_lengths, bounds))
    elif not config.metrics_urls:
        notes.append("input drift not measured: no vLLM /metrics to read")
    if after:
        _save_snapshot(config, after)
    return MonitorReport(live, psi, requests, len(samples), notes, time.monotonic() - started)


# --- data -------------------------------------------------------------------------------------------------------


def load_samples(config: MonitorConfig) -> list[_Sample]:
    """The first max_samples records of the dataset, as what perplexity scores and BLEU asks."""
    from gptops.pipeline.data.rendering import join_prompt_completion
    from gptops.pipeline.data.sources import load_records

    fields = config.fields
    prepare = PrepareConfig(
        source=config.source,
        model=ModelSource(kind="scratch"),  # not used: loading records needs no model
        artifact_root=config.work_dir,
        file_format=config.file_format,
        format=config.format,
        text_field=fields.get("text", "text"),
        messages_field=fields.get("messages", "messages"),
        prompt_field=fields.get("prompt", "prompt"),
        completion_field=fields.get("completion", "completion"),
    )
    records, origin = load_records(prepare)
    rows = records.select(range(min(config.max_samples, len(records))))
    samples: list[_Sample] = []
    for row in rows:
        if config.format == "text":
            if row["text"] and row["text"].strip():
                samples.append(_Sample(text=row["text"]))
        elif config.format == "prompt-completion":
            prompt, completion = row["prompt"] or "", (row["completion"] or "").strip()
            if prompt and completion:
                text = join_prompt_completion(prompt, completion)
                samples.append(_Sample(prompt=prompt, reference=completion, text=text, scored_from=len(prompt)))
        else:
            messages = row["messages"] or []
            if len(messages) > 1 and messages[-1]["role"] == "assistant" and messages[-1]["content"].strip():
                samples.append(_Sample(messages=messages[:-1], reference=messages[-1]["content"].strip()))
    if not samples:
        raise PipelineError(f"{origin}: no usable {config.format} records in the first {config.max_samples}; "
                            "expected records with a prompt and a reference (or text)")
    return samples


def samples_with_text(samples: list[_Sample]) -> bool:
    return any(s.text for s in samples)


# --- the endpoint -----------------------------------------------------------------------------------------------


def _post(client: httpx.Client, config: MonitorConfig, path: str, body: dict[str, Any]) -> dict[str, Any]:
    url = config.endpoint.rstrip("/") + path
    try:
        response = client.post(url, json={"model": config.served_name, **body})
    except httpx.HTTPError as e:
        raise PipelineError(f"{url}: {type(e).__name__}: {e}; expected the GPTModel's OpenAI-compatible endpoint") from e
    if response.status_code != 200:
        raise PipelineError(f"{url}: HTTP {response.status_code}: {response.text[:300]}")
    return response.json()


def live_perplexity(client: httpx.Client, config: MonitorConfig,
                    samples: list[_Sample]) -> tuple[float | None, list[int]]:
    """exp(mean NLL) over the scored tokens of every text, from the prompt log-probabilities the server echoes
    (token-weighted, as the evaluate stage computes it); None when the server returns none. Also the texts'
    prompt lengths as the server counted them."""
    total, tokens, lengths = 0.0, 0, []
    for sample in samples:
        if not sample.text:
            continue
        # One generated token, not 0: vLLM echoes the prompt either way, and a server that cannot generate 0 tokens
        # (transformers serve refuses 0) still answers. The generated token is not scored.
        reply = _post(client, config, "/completions", {"prompt": sample.text, "echo": True, "logprobs": 1,
                                                       "max_tokens": 1, "temperature": 0})
        if (n := (reply.get("usage") or {}).get("prompt_tokens")) is not None:
            lengths.append(int(n))
        nll, n_tokens = prompt_nll((reply.get("choices") or [{}])[0].get("logprobs"), sample.scored_from,
                                   len(sample.text))
        if n_tokens == 0 and tokens == 0:
            return None, lengths  # the server returns no prompt log-probabilities: asking again will not help
        total, tokens = total + nll, tokens + n_tokens
    if tokens == 0:
        return None, lengths
    return math.exp(min(total / tokens, 700.0)), lengths


def prompt_nll(logprobs: dict[str, Any] | None, start: int, end: int) -> tuple[float, int]:
    """(summed negative log-likelihood, token count) of the echoed prompt tokens that start within [start, end) of
    the text; the first token has no log-probability (nothing predicts it) and is skipped, as are generated ones."""
    if not logprobs:
        return 0.0, 0
    values, offsets = logprobs.get("token_logprobs") or [], logprobs.get("text_offset") or []
    nll, count = 0.0, 0
    for i, value in enumerate(values):
        offset = offsets[i] if i < len(offsets) else None
        if value is None or offset is None or not start <= offset < end:
            continue
        nll -= float(value)
        count += 1
    return nll, count


def live_bleu(client: httpx.Client, config: MonitorConfig, samples: list[_Sample]) -> tuple[float, list[int]]:
    """Corpus BLEU (sacrebleu) of the greedy completions against the references, and the prompts' lengths."""
    import sacrebleu

    hypotheses, references, lengths = [], [], []
    for sample in samples:
        if sample.reference is None:
            continue
        if sample.messages is not None:
            reply = _post(client, config, "/chat/completions", {"messages": sample.messages, "temperature": 0,
                                                                "max_tokens": config.max_new_tokens})
            text = ((reply.get("choices") or [{}])[0].get("message") or {}).get("content") or ""
        else:
            reply = _post(client, config, "/completions", {"prompt": sample.prompt, "temperature": 0,
                                                           "max_tokens": config.max_new_tokens})
            text = (reply.get("choices") or [{}])[0].get("text") or ""
        if (n := (reply.get("usage") or {}).get("prompt_tokens")) is not None:
            lengths.append(int(n))
        hypotheses.append(text.strip())
        references.append(sample.reference)
    return sacrebleu.corpus_bleu(hypotheses, [references]).score, lengths


# --- input drift ------------------------------------------------------------------------------------------------


def scrape(client: httpx.Client, urls: list[str], notes: list[str]) -> Snapshot:
    """The prompt-length histogram of each /metrics URL that answers (one that does not is noted and left out)."""
    out: Snapshot = {}
    for url in urls:
        try:
            response = client.get(url)
            response.raise_for_status()
        except httpx.HTTPError as e:
            notes.append(f"{url}: not read ({type(e).__name__})")
            continue
        buckets = histogram_buckets(response.text)
        if buckets:
            out[url] = buckets
        else:
            notes.append(f"{url}: no {PROMPT_TOKENS_HISTOGRAM} histogram")
    return out


def histogram_buckets(text: str, name: str = PROMPT_TOKENS_HISTOGRAM) -> dict[str, float]:
    """The cumulative bucket counts of histogram `name` in a Prometheus exposition, by `le`, summed over its other
    labels (model, engine)."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name != name:
            continue
        for sample in family.samples:
            if sample.name == f"{name}_bucket" and "le" in sample.labels:
                le = _le_key(sample.labels["le"])
                out[le] = out.get(le, 0.0) + sample.value
    return out


def _le_key(le: str) -> str:
    return "+Inf" if le in ("+Inf", "Inf", "inf") else repr(float(le))


def _bounds(snapshot: Snapshot) -> list[float]:
    return sorted({float(le) for buckets in snapshot.values() for le in buckets})


def live_counts(now: Snapshot, previous: Snapshot | None) -> tuple[list[float], list[float]]:
    """Requests per bin since `previous` (per Pod; a Pod whose counts fell restarted, and counts from zero), summed
    over the Pods; and the bins' upper bounds (the last is +Inf)."""
    bounds = _bounds(now)
    totals = [0.0] * len(bounds)
    for url, buckets in now.items():
        before = (previous or {}).get(url) or {}
        restarted = any(buckets.get(le, 0.0) < count for le, count in before.items())
        cumulative = [buckets.get(_le_key(str(b)), 0.0) - (0.0 if restarted else before.get(_le_key(str(b)), 0.0))
                      for b in bounds]
        for i, value in enumerate(cumulative):
            totals[i] += max(0.0, value - (cumulative[i - 1] if i else 0.0))
    return totals, bounds


def bin_counts(lengths: list[int], bounds: list[float]) -> list[float]:
    """How many lengths fall in each bin (le = upper bound, inclusive, as Prometheus buckets count)."""
    counts = [0.0] * len(bounds)
    for n in lengths:
        counts[next(i for i, b in enumerate(bounds) if n <= b)] += 1
    return counts


def population_stability_index(actual: list[float], expected: list[float]) -> float:
    """PSI = sum over bins of (a - e) * ln(a / e), a and e the proportions of the live and the reference counts."""
    a_total, e_total = sum(actual), sum(expected)
    if a_total <= 0 or e_total <= 0:
        raise ValueError("population_stability_index: both distributions need counts")
    psi = 0.0
    for a, e in zip(actual, expected, strict=True):
        pa, pe = max(a / a_total, PSI_FLOOR), max(e / e_total, PSI_FLOOR)
        psi += (pa - pe) * math.log(pa / pe)
    return psi


def _previous_snapshot(config: MonitorConfig) -> Snapshot | None:
    """The snapshot the newest earlier run left, if any (file names are Job names, newest by modification time)."""
    if config.state_dir is None or not config.state_dir.is_dir():
        return None
    files = [p for p in config.state_dir.glob("*.json") if p.stem != config.run_name]
    for path in sorted(files, key=lambda p: p.stat().st_mtime, reverse=True):
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            continue
    return None


def _save_snapshot(config: MonitorConfig, snapshot: Snapshot) -> None:
    """Written once per run, under its own name (a retried Pod writes the same name again, whole)."""
    if config.state_dir is None:
        return
    config.state_dir.mkdir(parents=True, exist_ok=True)
    tmp = config.state_dir / f".{config.run_name}.tmp"
    tmp.write_text(json.dumps(snapshot, sort_keys=True))
    tmp.replace(config.state_dir / f"{config.run_name}.json")


def config_from_spec(model: dict[str, Any], endpoint: str, *, metrics_urls: list[str] | None = None,
                     state_dir: Path | None = None, run_name: str = "run", base_dir: Path | None = None,
                     work_dir: Path | None = None) -> MonitorConfig:
    """The monitor config of a GPTModel (object or spec, camelCase) with spec.monitoring; ValueError names the field."""
    from gptops.api.gptmodel import GPTModelSpec
    from gptops.pipeline.config import _data_source, _parse, _unwrap

    spec = _parse(GPTModelSpec, _unwrap(model))
    monitoring = spec.monitoring
    if monitoring is None:
        raise ValueError("spec.monitoring: not set; expected intervalSeconds, dataset, metrics, tolerance, action")
    name = ((model.get("metadata") or {}).get("name") if "spec" in model else None) or "model"
    data = monitoring.dataset
    return MonitorConfig(
        endpoint=endpoint,
        served_name=name,
        source=_data_source(data.source, base_dir or Path.cwd()),
        format=data.format,
        file_format=data.file_format,
        fields=data.fields.to_dict(),
        metrics=list(monitoring.metrics),
        max_samples=data.max_samples,
        max_new_tokens=monitoring.max_new_tokens,
        metrics_urls=list(metrics_urls or []),
        state_dir=state_dir,
        run_name=run_name,
        min_requests=monitoring.input_drift.min_requests,
        **({"work_dir": work_dir} if work_dir else {}),
    )
