"""Deterministic, DNS-1123-safe names for children and label values. Pure; imports nothing from gptops."""

from __future__ import annotations

import hashlib
import re

DNS_LABEL_MAX = 63
#: Job names leave room for "-<index>" so an Indexed Job's Pod hostnames stay valid DNS labels.
JOB_NAME_MAX = 57

_INVALID = re.compile(r"[^a-z0-9-]+")
_LABEL_INVALID = re.compile(r"[^A-Za-z0-9._-]+")


def _digest(text: str, n: int = 8) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def dns_label(*parts: str | int, max_len: int = DNS_LABEL_MAX) -> str:
    """Join parts with '-' into a DNS-1123 label; too long (or altered) names end in a hash of the original."""
    raw = "-".join(str(p) for p in parts)
    clean = _INVALID.sub("-", raw.lower()).strip("-")
    clean = re.sub(r"-{2,}", "-", clean) or "x"
    if len(clean) <= max_len:
        return clean
    suffix = _digest(raw)
    return f"{clean[: max_len - len(suffix) - 1].rstrip('-')}-{suffix}"


def child_name(owner: str, stage: str, generation: int, *, max_len: int = JOB_NAME_MAX) -> str:
    """`<owner>-<stage>-<generation>`, DNS-1123 safe; long owners are cut and get a hash so names stay unique."""
    tail = f"-{stage}-{generation}"
    base = dns_label(owner, max_len=DNS_LABEL_MAX * 4)
    if len(base) + len(tail) <= max_len:
        return base + tail
    suffix = _digest(owner)
    keep = max_len - len(tail) - len(suffix) - 1
    return f"{base[:keep].rstrip('-')}-{suffix}{tail}"


def label_value(value: str) -> str:
    """A valid label value (<= 63 chars, alphanumeric at both ends); long values keep a hash suffix."""
    clean = _LABEL_INVALID.sub("-", value).strip("-_.")
    if clean and len(clean) <= DNS_LABEL_MAX:
        return clean
    suffix = _digest(value)
    return f"{clean[: DNS_LABEL_MAX - len(suffix) - 1].rstrip('-_.')}-{suffix}"
