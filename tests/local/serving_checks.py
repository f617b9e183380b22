"""What the serving tests compare a server with: the model's own greedy answer, and where a port listens."""

from __future__ import annotations

import socket
from pathlib import Path


def greedy_answer(model_dir: Path | str, question: str, max_tokens: int) -> str:
    """What the model itself answers one user message, greedily, through its tokenizer's chat template (no server)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    ids = tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=max_tokens, do_sample=False, pad_token_id=tok.eos_token_id)
    return tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)


def listening_addresses(port: int) -> set[str]:
    """The local addresses of the TCP sockets listening on `port` (from /proc/net/tcp and tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.read().splitlines()[1:]:
                fields = line.split()
                address, hex_port = fields[1].split(":")
                if fields[3] == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                    found.add(socket.inet_ntop(socket.AF_INET, bytes.fromhex(address)[::-1])
                              if len(address) == 8 else address)
    return found


def port_of(url: str) -> int:
    """8000 for http://127.0.0.1:8000/v1."""
    return int(url.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
