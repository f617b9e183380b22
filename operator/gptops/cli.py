"""The `gptops` command line: one Typer app; each command group lives in its own module and is added here."""

from __future__ import annotations

import typer

from gptops.crashes import report_native_crashes
from gptops.devcluster.cli import app as dev_cluster_app
from gptops.local.cli import run as run_command
from gptops.local.monitor import monitor as monitor_command
from gptops.render import render_cli
from gptops.status import status as status_command
from gptops.validate import validate_cli

app = typer.Typer(
    name="gptops",
    help="Fine-tune, evaluate and serve GPT-style models, on Kubernetes or on this machine.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)


@app.callback()
def _every_command() -> None:
    report_native_crashes()


@app.command()
def version() -> None:
    """Print the gptops version."""
    from gptops import __version__

    typer.echo(__version__)


app.add_typer(dev_cluster_app, name="dev-cluster")
app.command(name="run")(run_command)
app.command(name="monitor")(monitor_command)
app.command(name="status")(status_command)
app.command(name="validate")(validate_cli)
app.command(name="render")(render_cli)


@app.command(name="operator")
def operator_command(
    namespace: list[str] = typer.Option([], "--namespace", "-n", help="Watch this namespace (repeatable)."),
    all_namespaces: bool = typer.Option(False, "--all-namespaces", "-A", help="Watch every namespace."),
    metrics_port: int = typer.Option(8080, "--metrics-port", help="Port of /metrics (Prometheus)."),
    health_port: int = typer.Option(8081, "--health-port", help="Port of kopf's liveness endpoint /healthz."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging."),
) -> None:
    """Run the operator: reconcile GPTModels and FineTuneJobs in the cluster of the current kubeconfig."""
    from gptops.handlers.run import run_operator

    try:
        run_operator(namespace, all_namespaces=all_namespaces, metrics_port=metrics_port, health_port=health_port,
                     verbose=verbose)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from err
