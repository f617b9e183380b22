"""Multi-node training that survives a lost node: two torchrun "nodes" on CPU (gloo), started with the command line the
operator renders for an Indexed Job's Pods (static rendezvous, the launcher that keeps a worker's exit code), sharing
one artifacts directory as the ReadWriteMany claim. One node is killed mid-run; its peer fails as a crash (retried, not
final); both started again resume from the newest checkpoint and finish."""

from __future__ import annotations

import copy
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from conftest import TINY_MODEL, ftj_spec

from gptops.api.constants import EXIT_CRASHED
from gptops.builders.job import torchrun_static
from gptops.pipeline import configs_from_spec, run_prepare

pytestmark = pytest.mark.slow

MAX_STEPS = 80


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_nodes(tmp_path: Path, root: Path, ftj: dict, model: dict, attempt: int) -> list[subprocess.Popen]:
    port = _free_port()
    stage = ["-m", "gptops.pipeline", "train", "--spec-json", json.dumps(ftj), "--model-spec-json", json.dumps(model),
             "--artifacts", str(root)]
    procs = []
    for rank in (0, 1):
        argv = torchrun_static(2, 1, "127.0.0.1", node_rank=str(rank), master_port=port)
        assert argv[:3] == ["python", "-m", "gptops.pipeline.torchrun"]
        env = {**os.environ, "GPTOPS_TERMINATION_LOG": str(tmp_path / f"log-{attempt}-{rank}"),
               "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        out = open(tmp_path / f"out-{attempt}-{rank}.txt", "w")  # noqa: SIM115 - closed with the process
        procs.append(subprocess.Popen([sys.executable, *argv[1:], *stage], stdout=out, stderr=subprocess.STDOUT,
                                      env=env, start_new_session=True))
    return procs


def _kill_node(proc: subprocess.Popen) -> None:
    """What losing the node does to its Pod: the launcher and its workers (in sessions of their own) die at once."""
    tree = psutil.Process(proc.pid)
    for p in [*tree.children(recursive=True), tree]:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


def _wait(procs: list[subprocess.Popen], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    try:
        return [p.wait(timeout=max(1.0, deadline - time.monotonic())) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                _kill_node(p)


def _complete_checkpoints(root: Path) -> list[int]:
    ckpts = root / "checkpoints"
    if not ckpts.is_dir():
        return []
    return sorted(int(p.name.split("-")[1]) for p in ckpts.glob("checkpoint-*") if (p / "trainer_state.json").exists())


def test_two_nodes_lose_one_and_resume_from_the_checkpoint(tmp_path, corpus_file):
    root = tmp_path / "artifacts"  # one directory for both nodes: the ReadWriteMany claim
    spec = ftj_spec(corpus_file, training={"maxSteps": MAX_STEPS, "checkpointEverySteps": 5, "batchSize": 4})
    ftj = {"apiVersion": "gptops.io/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "t"}, "spec": spec}
    model = {"apiVersion": "gptops.io/v1alpha1", "kind": "GPTModel", "metadata": {"name": "tiny"},
             "spec": copy.deepcopy(TINY_MODEL)}
    run_prepare(configs_from_spec(copy.deepcopy(spec), copy.deepcopy(model["spec"]), root).prepare)

    first = _start_nodes(tmp_path, root, ftj, model, 1)
    deadline = time.monotonic() + 300
    while not _complete_checkpoints(root) and time.monotonic() < deadline and all(p.poll() is None for p in first):
        time.sleep(0.2)
    assert _complete_checkpoints(root), (tmp_path / "out-1-0.txt").read_text()[-3000:]
    _kill_node(first[1])  # the node of rank 1 is lost
    codes = _wait(first, 120)
    # The peer's worker fails on its collective and exits as a crash: its Job retries it (exit 1 would be final).
    assert codes[0] == EXIT_CRASHED, (tmp_path / "out-1-0.txt").read_text()[-3000:]
    assert not (root / "model").exists()
    reached = max(_complete_checkpoints(root))
    assert reached < MAX_STEPS

    second = _start_nodes(tmp_path, root, ftj, model, 2)
    assert _wait(second, 600) == [0, 0], (tmp_path / "out-2-0.txt").read_text()[-3000:]
    result = json.loads((tmp_path / "log-2-0").read_text())
    assert result["ok"] is True, result
    assert "resumed from checkpoint-" in result["message"], result["message"]
    resumed = int(result["message"].split("resumed from checkpoint-")[1].split()[0].rstrip(",."))
    assert resumed >= reached
    assert f"to step {MAX_STEPS}" in result["message"]
    assert (root / "model" / "gptops-weights.json").exists()
