"""`gptops render`: prints every child manifest the operator would create for the specs in a file, no cluster needed:
the stage Jobs of each FineTuneJob (generation 1 unless metadata.generation says otherwise) and the vLLM Deployment
and Service of each GPTModel. Uses the builders only; no kopf, no kubernetes."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from pydantic import ValidationError

from gptops.api.artifacts import (
    ServedRevision,
    base_served_revision,
    served_revision_for,
    served_revision_from_status,
)
from gptops.api.constants import KIND_FINETUNEJOB, KIND_GPTMODEL, STAGES
from gptops.api.finetunejob import FineTuneJob
from gptops.api.gptmodel import GPTModel
from gptops.api.revisions import new_revision
from gptops.builders import BuildError, build_deployment, build_service, build_stage_children
from gptops.validate import is_gptops_object, load_documents


class RenderError(ValueError):
    """A spec that cannot be rendered; the message names the object and the reason."""


def _parse(doc: dict[str, Any]) -> GPTModel | FineTuneJob:
    meta = {"namespace": "default", "generation": 1, **(doc.get("metadata") or {})}
    doc = {**doc, "metadata": meta}
    cls = GPTModel if doc["kind"] == KIND_GPTMODEL else FineTuneJob
    try:
        return cls.from_dict(doc)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise RenderError(f"{doc['kind']}/{meta.get('name', '<unnamed>')}: {where}: {first['msg']}") from e


def trained(ftj: FineTuneJob, model: GPTModel) -> FineTuneJob:
    """`ftj` as it would be once its stages ran from the GPTModel's source: its status names its revision."""
    if ftj.status.artifacts.directory:
        return ftj
    revision = new_revision(ftj, model)
    arts = ftj.status.artifacts.model_copy(update={"revision": revision.key, "directory": revision.directory})
    return ftj.model_copy(update={"status": ftj.status.model_copy(update={"artifacts": arts})})


def served_for_render(model: GPTModel, ftjs: list[FineTuneJob]) -> ServedRevision | None:
    """The revision the Deployment would serve: the pinned FineTuneJob, else status, else the FineTuneJob in the
    file once promoted (the last one that asks for promotion, else the last one), else the model's own source."""
    mine = [f for f in ftjs if f.spec.model.name == model.name and f.namespace == model.namespace]
    pin = model.spec.serving.revision
    if pin:
        pinned = next((f for f in mine if f.name == pin), None)
        if pinned is not None:
            return served_revision_for(trained(pinned, model), model)
    from_status = served_revision_from_status(model)
    if from_status is not None:
        return from_status
    promoting = [f for f in mine if f.spec.evaluation.promote] or mine
    if promoting:
        return served_revision_for(trained(promoting[-1], model), model)
    return base_served_revision(model)


def render_objects(docs: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """(child manifests, notes) for the GPTModels and FineTuneJobs among `docs`; other kinds are ignored."""
    parsed = [_parse(d) for d in docs if is_gptops_object(d)]
    models = [p for p in parsed if isinstance(p, GPTModel)]
    ftjs = [p for p in parsed if isinstance(p, FineTuneJob)]
    out: list[dict[str, Any]] = []
    notes: list[str] = []
    for ftj in ftjs:
        model = next((m for m in models if m.name == ftj.spec.model.name and m.namespace == ftj.namespace), None)
        if model is None:
            raise RenderError(f"{KIND_FINETUNEJOB}/{ftj.name}: spec.model.name: GPTModel {ftj.spec.model.name!r} "
                              f"is not in the given files; pass its file too")
        revision = new_revision(ftj, model)
        notes.append(f"{KIND_FINETUNEJOB}/{ftj.name}: revision {revision.key} (from the GPTModel's source) writes "
                     f"{revision.directory}; a change to its dataset, start or training fields writes another")
        for stage in STAGES:
            try:
                out += build_stage_children(ftj, model, stage, revision=revision)
            except BuildError as e:
                raise RenderError(f"{KIND_FINETUNEJOB}/{ftj.name}: {e}") from e
    for model in models:
        served = served_for_render(model, ftjs)
        if served is None:
            notes.append(f"{KIND_GPTMODEL}/{model.name}: no Deployment until a FineTuneJob is promoted "
                         f"(spec.source.{model.spec.source.kind} cannot be served as it is)")
        else:
            out.append(build_deployment(model, served))
        out.append(build_service(model))
    return out, notes


class _NoAliases(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


def dump(objects: list[dict[str, Any]], output: str) -> str:
    """YAML documents separated by ---, or a JSON v1 List."""
    if output == "json":
        return json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}, indent=2)
    return yaml.dump_all(objects, Dumper=_NoAliases, sort_keys=False, explicit_start=True, width=120)


def render_cli(
    files: Annotated[list[Path], typer.Argument(help="YAML files with GPTModels and FineTuneJobs; - reads stdin.")],
    output: Annotated[str, typer.Option("--output", "-o", help="yaml or json.")] = "yaml",
) -> None:
    """Print the Jobs, Deployment and Services the operator would create for the specs, without a cluster."""
    if output not in ("yaml", "json"):
        raise typer.BadParameter("expected yaml or json", param_hint="--output")
    try:
        docs = [d for f in files for d in load_documents(f)]
        objects, notes = render_objects(docs)
    except (OSError, yaml.YAMLError, RenderError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from e
    for note in notes:
        typer.echo(f"note: {note}", err=True)
    sys.stdout.write(dump(objects, output))
    if output == "json":
        sys.stdout.write("\n")
