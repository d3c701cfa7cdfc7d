"""Drawing a pipeline's graph as text, Mermaid or Graphviz DOT."""

from __future__ import annotations

import json

from engine.pipeline import JobBase, Pipeline, TriggerRule


def _fan_note(job: JobBase) -> str:
    fan = job.fan_out
    if fan is None:
        return ""
    if fan.matrix is not None:
        sizes = [len(v) if isinstance(v, list) else "?" for v in fan.matrix.values()]
        count = " x ".join(str(s) for s in sizes)
    elif isinstance(fan.items, list):
        count = str(len(fan.items))
    else:
        count = "n"
    limit = f", {fan.max_concurrency} at a time" if fan.max_concurrency else ""
    return f"for each of {count}{limit}"


def _condition(job: JobBase) -> str | None:
    if job.condition is None:
        return None
    return str(job.condition).lower() if isinstance(job.condition, bool) else job.condition


def draw_text(pipeline: Pipeline) -> str:
    """Levels top to bottom; each job with its type, parents, condition and fan-out."""
    levels = pipeline.graph.levels()
    lines = [f"{pipeline.name}  ({len(pipeline.jobs)} jobs, {len(levels)} levels)", ""]
    width = max(len(job.id) for job in pipeline.jobs)
    for depth, ids in enumerate(levels):
        for i, job_id in enumerate(ids):
            job = pipeline.job(job_id)
            head = f"L{depth}" if i == 0 else ""
            marker = "●" if not job.depends_on else "◀"
            text = f"{head:<4}{marker} {job.id:<{width}}  {job.type:<13}"
            if job.depends_on:
                text += f" after {', '.join(job.depends_on)}"
            if job.trigger_rule is not TriggerRule.ALL_SUCCESS:
                text += f" [{job.trigger_rule.value}]"
            condition = _condition(job)
            if condition:
                text += f"  if {condition}"
            fan = _fan_note(job)
            if fan:
                text += f"  ({fan})"
            lines.append(text.rstrip())
        if depth < len(levels) - 1:
            lines.append("    │")
    return "\n".join(lines)


def _mermaid_text(text: str) -> str:
    return text.replace('"', "#quot;").replace("<", "#lt;").replace(">", "#gt;")


def draw_mermaid(pipeline: Pipeline) -> str:
    """A Mermaid flowchart; conditional edges are dotted and labelled with the condition."""
    lines = ["flowchart TD"]
    for job in pipeline.jobs:
        label = f"{_mermaid_text(job.display_name)}<br/><i>{job.id} · {job.type}</i>"
        fan = _fan_note(job)
        if fan:
            label += f"<br/>{_mermaid_text(fan)}"
        shape = ('[["', '"]]') if job.fan_out else ('["', '"]')
        lines.append(f"    {job.id}{shape[0]}{label}{shape[1]}")
    for job in pipeline.jobs:
        condition = _condition(job)
        for parent in job.depends_on:
            if condition:
                lines.append(f'    {parent} -.->|"{_mermaid_text(condition)}"| {job.id}')
            else:
                lines.append(f"    {parent} --> {job.id}")
    return "\n".join(lines)


def _dot(text: str | None) -> str:
    """A DOT string literal; Graphviz reads UTF-8, so no \\u escapes."""
    return json.dumps(text, ensure_ascii=False)


def draw_dot(pipeline: Pipeline) -> str:
    """A Graphviz digraph; conditional edges are dashed and labelled with the condition."""
    lines = [
        f"digraph {_dot(pipeline.name)} {{",
        "    rankdir=TB;",
        '    node [shape=box, style="rounded"];',
    ]
    for job in pipeline.jobs:
        label = f"{job.display_name}\n{job.id} ({job.type})"
        fan = _fan_note(job)
        if fan:
            label += f"\n{fan}"
        extra = ", peripheries=2" if job.fan_out else ""
        lines.append(f"    {_dot(job.id)} [label={_dot(label)}{extra}];")
    for job in pipeline.jobs:
        condition = _condition(job)
        for parent in job.depends_on:
            attrs = f" [style=dashed, label={_dot(condition)}]" if condition else ""
            lines.append(f"    {_dot(parent)} -> {_dot(job.id)}{attrs};")
    lines.append("}")
    return "\n".join(lines)
