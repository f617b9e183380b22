"""`gptops dev-cluster up|down|status`: the command group for the local control plane.

Imports the cluster code inside each command, so `gptops` works without the `devcluster` extra (cryptography, for
the cluster's certificates); the commands themselves need it and say so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

EXTRA = "devcluster"
EXTRA_MODULES = ("cryptography",)

app = typer.Typer(help="A local control plane (etcd, kube-apiserver, controllers, kwok GPU nodes) for tests.")

DirOption = Annotated[
    Path | None, typer.Option("--dir", help="State directory [default: ~/.cache/gptops/dev-cluster].")
]


def _cluster():
    """gptops.devcluster.cluster, or exit 1 with the extra to install when its dependencies are missing."""
    try:
        from gptops.devcluster import cluster
    except ModuleNotFoundError as err:
        if (err.name or "").partition(".")[0] not in EXTRA_MODULES:
            raise
        typer.echo(f"error: gptops dev-cluster needs the {EXTRA} extra ({err.name} is not installed): "
                   f"pip install 'gptops[{EXTRA}]'", err=True)
        raise typer.Exit(1) from None
    return cluster


def _resolve(directory: Path | None) -> Path:
    return (directory or _cluster().default_dir()).resolve()


@app.command()
def up(
    directory: DirOption = None,
    nodes: Annotated[int, typer.Option(help="Fake GPU nodes to create.")] = 2,
    real_node: Annotated[bool, typer.Option(
        "--real-node", help="Also a real node (containerd + kubelet, needs root; tainted gptops.io/real-node)."
    )] = False,
) -> None:
    """Build the programs if needed, start a fresh cluster and print the `export KUBECONFIG=...` line."""
    import time

    devcluster = _cluster()
    from gptops.devcluster.realnode import RealNodeUnavailable

    began = time.monotonic()
    try:
        cluster = devcluster.start(_resolve(directory), nodes=nodes, real_node=real_node)
    except (devcluster.DevClusterError, RealNodeUnavailable) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from err
    took = time.monotonic() - began
    typer.echo(f"dev cluster up at {cluster.server} in {took:.1f}s; logs in {cluster.logs}", err=True)
    typer.echo(f"export KUBECONFIG={cluster.kubeconfig}")


@app.command()
def down(directory: DirOption = None) -> None:
    """Stop every process of the cluster, in reverse start order."""
    stopped = _cluster().stop(_resolve(directory))
    typer.echo(f"stopped {', '.join(stopped)}" if stopped else "nothing was running")


@app.command()
def status(directory: DirOption = None) -> None:
    """Show each recorded process, its pid and whether it runs; exit 1 unless all run."""
    state_dir = _resolve(directory)
    components = _cluster().status(state_dir)
    if not components:
        typer.echo(f"no dev cluster recorded in {state_dir}")
        raise typer.Exit(1)
    for c in components:
        typer.echo(f"{c.name:<24} pid {c.pid:<8} {'running' if c.alive else 'stopped':<8} {c.log}")
    if not all(c.alive for c in components):
        raise typer.Exit(1)
    typer.echo(f"export KUBECONFIG={state_dir / 'kubeconfig'}")
