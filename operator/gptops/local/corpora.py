"""Built-in offline corpora for `gptops run`: Python's own documentation (`pydoc_data.topics`), written as JSONL.

A FineTuneJob names one with `dataset.source.local.path: "builtin:<name>"`; `gptops run` writes the file into its
runs directory and hands the pipeline that path. Nothing here is downloaded. Imports only the standard library.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path

PREFIX = "builtin:"

# A reST-style heading as pydoc renders it: a title line, then a line of one repeated punctuation character.
_UNDERLINE = re.compile(r"^([*=\-~^\"'`#+])\1{2,}$")


def _topics() -> dict[str, str]:
    from pydoc_data.topics import topics

    return topics


def split_sections(text: str) -> Iterator[tuple[str, str]]:
    """Yield (title, body) for each headed section of one pydoc topic; text before the first heading is skipped."""
    lines = text.splitlines()
    title, body = None, []
    i = 0
    while i < len(lines):
        if i + 1 < len(lines) and lines[i].strip() and _UNDERLINE.match(lines[i + 1].strip()):
            if title is not None:
                yield title, "\n".join(body).strip()
            title, body = lines[i].strip(), []
            i += 2
            continue
        body.append(lines[i])
        i += 1
    if title is not None:
        yield title, "\n".join(body).strip()


def _first_paragraph(body: str, max_chars: int) -> str:
    """The first prose paragraph of a section, reflowed to one line (grammar and code blocks are indented: skipped)."""
    for paragraph in re.split(r"\n\s*\n", body):
        if not paragraph.strip() or paragraph.startswith((" ", "\t")):
            continue
        line = " ".join(paragraph.split())
        if len(line) > max_chars:
            line = line[:max_chars].rsplit(" ", 1)[0] + " ..."
        return line
    return ""


def pydoc_topics() -> Iterator[dict]:
    """One text document per section of Python's documentation topics (about 470 KB in all)."""
    for key, text in sorted(_topics().items()):
        for title, body in split_sections(text):
            if len(body) >= 40:
                yield {"text": f"{title}\n\n{body}\n", "topic": key}


def question(title: str) -> str:
    """The question the `pydoc-qa` corpus asks about a section; ask the served model in the same words."""
    if title.startswith(("The ", "A ", "An ")):
        title = title[0].lower() + title[1:]
    return f"What is {title}?"


def pydoc_qa() -> Iterator[dict]:
    """Chat pairs: the user asks 'What is <section title>?', the assistant answers with its first paragraph."""
    seen: set[str] = set()
    for key, text in sorted(_topics().items()):
        for title, body in split_sections(text):
            answer = _first_paragraph(body, max_chars=400)
            if len(answer) < 40 or title in seen:
                continue
            seen.add(title)
            yield {"messages": [{"role": "user", "content": question(title)},
                                {"role": "assistant", "content": answer}], "topic": key}


CORPORA: dict[str, Callable[[], Iterator[dict]]] = {
    "pydoc-topics": pydoc_topics,
    "pydoc-qa": pydoc_qa,
}


def is_builtin(path: str) -> bool:
    """Whether a `local.path` names a built-in corpus rather than a file."""
    return path.startswith(PREFIX)


def write_builtin(path: str, directory: Path) -> Path:
    """Write the corpus `builtin:<name>` as `<directory>/<name>.jsonl` (once) and return the file's path."""
    name = path[len(PREFIX):].removesuffix(".jsonl")
    if name not in CORPORA:
        raise ValueError(f"dataset.source.local.path: unknown built-in corpus {path!r}; known: "
                         + ", ".join(PREFIX + n for n in sorted(CORPORA)))
    out = directory / f"{name}.jsonl"
    if not out.exists():
        directory.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".jsonl.tmp")
        with tmp.open("w", encoding="utf-8") as f:
            for record in CORPORA[name]():
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
        tmp.replace(out)
    return out
