"""Loading a pipeline: text or data in, a validated :class:`~engine.pipeline.Pipeline` out.

Validation runs in three passes so that every problem of a file is reported
at once: the top-level fields, then each parameter and each job on its own
(a broken job does not hide the others), then the checks that need the
whole document (:mod:`engine.checks`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from engine.checks import JobChecker, check_graph, check_parameters, raw_jobs
from engine.errors import PipelineInvalid, Problem
from engine.pipeline import Job, JobBase, Parameter, Pipeline, PipelineHead
from engine.source import Document, SourceMap, parse_document, read_document
from engine.validation import Report, add_validation_errors, kind_of

_JOB = TypeAdapter(Job)


def read_pipeline(path: str | Path) -> Pipeline:
    """Read, parse and validate a pipeline file.

    Raises:
        PipelineInvalid: every problem of the file, located.
    """
    return _from_document(read_document(path))


def load_pipeline(text: str | bytes, source: str = "<pipeline>") -> Pipeline:
    """Parse and validate pipeline YAML (or JSON) text.

    Raises:
        PipelineInvalid: every problem of the text, located.
    """
    return _from_document(parse_document(text, source))


def _from_document(document: Document) -> Pipeline:
    return validate_pipeline(document.data, document.source_map, document.name)


def validate_pipeline(
    data: Any, source_map: SourceMap | None = None, source: str | None = None
) -> Pipeline:
    """Validate plain data (from YAML, or a JSON API body) as a pipeline.

    Raises:
        PipelineInvalid: every problem found.
    """
    report = Report(source_map)
    if not isinstance(data, dict):
        report.add(
            (),
            f"the document is {kind_of(data)}, not a mapping of pipeline fields.",
            'start with: version: "1.1", name: ..., jobs: [...]',
        )
        raise PipelineInvalid(report.sorted(), source)
    head = _validate(report, PipelineHead, data, ())
    params: dict[int, Parameter] = {}
    raw_params = data.get("parameters")
    for index, raw in enumerate(raw_params if isinstance(raw_params, list) else []):
        model = _validate(report, Parameter, raw, ("parameters", index))
        if model is not None:
            params[index] = model
    jobs: dict[int, JobBase] = {}
    raw_job_list = data.get("jobs")
    for index, raw in enumerate(raw_job_list if isinstance(raw_job_list, list) else []):
        model = _validate(report, _JOB, raw, ("jobs", index))
        if model is not None:
            jobs[index] = model
    check_parameters(report, params, raw_params)
    readable = raw_jobs(data, jobs)
    graph = check_graph(report, readable)
    by_name = {param.name: param for param in params.values()}
    by_id = {job.id: job for job in reversed(jobs.values())}
    known = {job.id for job in readable if job.id is not None}
    checker = JobChecker(report, by_name, graph, by_id, known)
    for index, raw in enumerate(raw_job_list if isinstance(raw_job_list, list) else []):
        if index in jobs:
            checker.check(index, jobs[index], raw)
        else:
            checker.check_syntax(index, raw)
    if report or head is None:
        raise PipelineInvalid(report.sorted() or [Problem("", "invalid pipeline.")], source)
    # Every part is validated above; building the model again would repeat that work.
    fields = {name: getattr(head, name) for name in PipelineHead.model_fields}
    fields["parameters"] = [params[i] for i in sorted(params)]
    fields["jobs"] = [jobs[i] for i in sorted(jobs)]
    return Pipeline.model_construct(head.model_fields_set | {"parameters", "jobs"}, **fields)


def _validate(report: Report, model: Any, raw: Any, at: tuple[Any, ...]) -> Any:
    try:
        if isinstance(model, TypeAdapter):
            return model.validate_python(raw)
        return model.model_validate(raw)
    except ValidationError as exc:
        target = Pipeline if model is PipelineHead else Job if model is _JOB else model
        add_validation_errors(report, exc, raw, at, target)
        return None
