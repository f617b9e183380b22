"""Models and tokenizers for the stages: resolve a ModelSource to something from_pretrained loads, build a scratch
model from its config, train a byte-level BPE tokenizer, and pick the device and dtype.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from gptops.pipeline.config import ModelSource
from gptops.pipeline.errors import PipelineError

if TYPE_CHECKING:  # torch is imported where a model is built: prepare and the operator never load it
    import torch

log = logging.getLogger(__name__)

EOS = "<|endoftext|>"
# A plain template for tokenizers that have none (those trained on the spot, base models). It renders one message
# per block and ends each with the tokenizer's EOS, so a generation stops where a turn ends.
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


MERGED_START_DIR = "merged-start-model"
"""Under the cache dir: a LoRA start model (base + adapter) merged into full weights, shared by the three stages."""


def resolve_model_dir(source: ModelSource, cache_dir: Path) -> str:
    """What from_pretrained takes for `source`: a hub id, or a local directory (an S3 prefix is downloaded once; a
    LoRA adapter directory, e.g. a served LoRA revision with startFrom: serving, is merged into its base once)."""
    if source.kind == "huggingface":
        return source.location
    if source.kind == "path":
        location = Path(source.location)
        if (location / "adapter_config.json").exists() and not (location / "config.json").exists():
            return merge_adapter(location, cache_dir / MERGED_START_DIR)
        if not Path(source.location, "config.json").exists():
            raise PipelineError(f"{source.location}: no config.json there; expected a model directory (from_pretrained layout)")
        return source.location
    if source.kind == "s3":
        target = cache_dir / "base-model"
        if not (target / "config.json").exists():
            import s3fs

            fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": source.endpoint_url} if source.endpoint_url else {})
            prefix = source.location.removeprefix("s3://").rstrip("/")
            log.info("Downloading model from S3 uri=%s target=%s", source.location, target)
            fs.get(prefix + "/", str(target) + "/", recursive=True)
            if not (target / "config.json").exists():
                raise PipelineError(f"{source.location}: no config.json under this prefix; expected a model directory")
        return str(target)
    raise PipelineError(f"model.source: a {source.kind} model has no weights to load")


def merge_adapter(adapter_dir: Path, target: Path) -> str:
    """Base + LoRA adapter as one full model in `target` (weights, config, the adapter's tokenizer), written once:
    training and evaluation then start from what the adapter served, not from the bare base."""
    if (target / "config.json").exists():
        return str(target)
    import json
    import shutil

    from peft import PeftModel

    # The base as train wrote it down (gptops-base.json), else as peft recorded it.
    recorded = json.loads((adapter_dir / "adapter_config.json").read_text())
    gptops_base = adapter_dir / "gptops-base.json"
    ours = json.loads(gptops_base.read_text()) if gptops_base.exists() else {}
    base = ours.get("baseModel") or recorded.get("base_model_name_or_path")
    revision = ours.get("baseRevision") or recorded.get("revision")
    if not base:
        raise PipelineError(f"{adapter_dir}: a LoRA adapter that names no base model (adapter_config.json "
                            f"base_model_name_or_path); expected the adapter/ of a gptops LoRA run")
    hub = {} if Path(base).is_dir() else {"revision": revision, "token": os.environ.get("HF_TOKEN") or None}
    log.info("Merging LoRA adapter adapter=%s base=%s target=%s", adapter_dir, base, target)
    tokenizer = load_tokenizer(adapter_dir)
    try:
        model = load_pretrained_model(base, "auto", **hub)
        if len(tokenizer) > model.get_input_embeddings().num_embeddings:  # as train resized it before adapting
            model.resize_token_embeddings(len(tokenizer))
        model = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()  # W + B·A·alpha/r, per layer
    except (OSError, ValueError) as e:
        raise PipelineError(f"{adapter_dir}: cannot load the adapter on its base {base} ({e})") from e
    tmp = target.with_name(target.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(str(tmp), safe_serialization=True)
    tokenizer.save_pretrained(str(tmp))
    (tmp / "gptops-merged.json").write_text(json.dumps({"adapter": str(adapter_dir), "baseModel": base,
                                                        "baseRevision": revision}) + "\n")
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)  # whole or not at all: a stage that died mid-write merges again
    return str(target)


def hub_kwargs(source: ModelSource) -> dict:
    """from_pretrained keyword arguments for a hub model: revision and the token from the environment (HF_TOKEN)."""
    if source.kind != "huggingface":
        return {}
    return {"revision": source.revision, "token": os.environ.get("HF_TOKEN") or None}


def load_tokenizer(path: str | Path, **kwargs):
    """A fast tokenizer with a pad token (EOS when the model has none)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path), **kwargs)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.chat_template is None:
        tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
    return tokenizer


def train_tokenizer(texts: Iterable[str], vocab_size: int, context_length: int):
    """Train a byte-level BPE (GPT-2 style) on `texts`; returns a PreTrainedTokenizerFast with EOS as bos/eos/pad."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte is a token: nothing is ever unknown
        show_progress=False,
    )
    bpe.train_from_iterator(_batches(texts), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=EOS,
        eos_token=EOS,
        unk_token=EOS,
        pad_token=EOS,
        model_max_length=context_length,
    )
    tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
    return tokenizer


def _batches(texts: Iterable[str], size: int = 1000) -> Iterator[list[str]]:
    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def context_length(source: ModelSource, cache_dir: Path) -> int:
    """The model's maximum sequence length."""
    if source.is_scratch:
        return source.context_length
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(resolve_model_dir(source, cache_dir), **hub_kwargs(source))
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return 1024


def build_scratch_model(source: ModelSource, tokenizer, seed: int, dtype: torch.dtype | None = None):
    """A freshly initialised causal LM of the scratch architecture (fp32 unless `dtype`); the same seed gives the
    same weights."""
    import torch
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

    vocab = len(tokenizer)
    common = dict(vocab_size=vocab, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                  pad_token_id=tokenizer.pad_token_id)
    if source.architecture == "gpt2":
        config = GPT2Config(n_layer=source.layers, n_head=source.heads, n_embd=source.hidden,
                            n_positions=source.context_length, **common)
    else:
        config = LlamaConfig(num_hidden_layers=source.layers, num_attention_heads=source.heads,
                             num_key_value_heads=source.heads, hidden_size=source.hidden,
                             intermediate_size=4 * source.hidden, max_position_embeddings=source.context_length,
                             tie_word_embeddings=True, **common)
    config._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=dtype or torch.float32)
    return model


def load_pretrained_model(path: str, dtype: torch.dtype | str, **kwargs):
    """A causal LM from a hub id or a directory, with SDPA attention."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="sdpa", **kwargs)


def pick_dtype(precision: str) -> torch.dtype:
    """The compute dtype: bf16 on a GPU that has it (auto), else what was asked, fp32 on CPU."""
    import torch

    cuda = torch.cuda.is_available()
    if precision == "auto":
        return torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float32
    if precision in ("bf16", "fp16") and not cuda:
        log.warning("No GPU: running in fp32 instead of %s", precision)
        return torch.float32
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]


def device() -> torch.device:
    """The device of this process (its local rank's GPU under torchrun)."""
    import torch

    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")
