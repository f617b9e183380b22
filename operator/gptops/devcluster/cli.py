"""`gptops dev-cluster up|down|status`: the command group for the local control plane.

Imports the cluster code inside each command, so `gptops` works without the dev extras installed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="A local control plane (etcd, kube-apiserver, controllers, kwok GPU nodes) for tests.")

DirOption = Annotated[
    Path | None, typer.Option("--dir", help="State directory [default: ~/.cache/gptops/dev-cluster].")
]


def _resolve(directory: Path | None) -> Path:
    from gptops.devcluster.cluster import default_dir

    return (directory or default_dir()).resolve()


@app.command()
def up(directory: DirOption = None, nodes: Annotated[int, typer.Option(help="Fake GPU nodes to create.")] = 2) -> None:
    """Build the programs if needed, start a fresh cluster and print the `export KUBECONFIG=...` line."""
    import time

    from gptops.devcluster.cluster import DevClusterError, start

    began = time.monotonic()
    try:
        cluster = start(_resolve(directory), nodes=nodes)
    except DevClusterError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from err
    took = time.monotonic() - began
    typer.echo(f"dev cluster up at {cluster.server} in {took:.1f}s; logs in {cluster.logs}", err=True)
    typer.echo(f"export KUBECONFIG={cluster.kubeconfig}")


@app.command()
def down(directory: DirOption = None) -> None:
    """Stop every process of the cluster, in reverse start order."""
    from gptops.devcluster.cluster import stop

    stopped = stop(_resolve(directory))
    typer.echo(f"stopped {', '.join(stopped)}" if stopped else "nothing was running")


@app.command()
def status(directory: DirOption = None) -> None:
    """Show each recorded process, its pid and whether it runs; exit 1 unless all run."""
    from gptops.devcluster.cluster import status as cluster_status

    state_dir = _resolve(directory)
    components = cluster_status(state_dir)
    if not components:
        typer.echo(f"no dev cluster recorded in {state_dir}")
        raise typer.Exit(1)
    for c in components:
        typer.echo(f"{c.name:<24} pid {c.pid:<8} {'running' if c.alive else 'stopped':<8} {c.log}")
    if not all(c.alive for c in components):
        raise typer.Exit(1)
    typer.echo(f"export KUBECONFIG={state_dir / 'kubeconfig'}")
