"""A saga definition described as JSON, and drawn from that description (feature A6).

:meth:`SagaDefinition.describe() <sagakit.definition.SagaDefinition.describe>` gives the
description: name, version, fingerprint, deadline, pivot, and each step's kind, handlers,
timeouts and retry policies. Everything here works on that JSON alone, not on the definition's
Python functions, so a command that runs no user code draws a definition the same way from
what a worker recorded. A handler is ``{"where": "local", "function": "module.name"}`` or
``{"where": "remote", "participant": …, "command": …}``.

The drawing: actions go forward, left to right, from ``start`` to ``completed``; a step that
fails before the point of no return leads (dotted) to the compensation of the step before it,
and compensations run backwards to ``failed``. Shapes tell the kinds apart: a rectangle for a
compensatable step, a hexagon for the pivot, a stadium for a retriable step; a compensation is
a parallelogram.

>>> print(mermaid({"name": "t", "steps": [
...     {"name": "a", "kind": "compensatable", "action": {"where": "local", "function": "m.a"},
...      "compensation": {"where": "local", "function": "m.undo_a"}},
...     {"name": "b", "kind": "pivot",
...      "action": {"where": "remote", "participant": "p", "command": "b.do"},
...      "compensation": None},
... ]}))
flowchart LR
  start((start))
  s0["a<br/>compensatable"]
  start --> s0
  s1{{"b<br/>pivot<br/>p: b.do"}}
  s0 --> s1
  s1 --> completed((completed))
  c0[/"undo a"/]
  s0 -. fails .-> failed((failed))
  s1 -. fails .-> c0
  c0 -.-> failed
"""

from __future__ import annotations

from typing import cast

from sagakit.encoding import JSON

_SHAPES = {"compensatable": '["{}"]', "pivot": '{{{{"{}"}}}}', "retriable": '(["{}"])'}


def mermaid(description: dict[str, JSON]) -> str:
    """The Mermaid flowchart of a definition's description (see the module)."""
    steps = [cast(dict[str, JSON], s) for s in cast(list[JSON], description.get("steps") or [])]
    lines = ["flowchart LR", "  start((start))"]
    previous = "start"
    for i, step in enumerate(steps):
        label = f"{_text(step.get('name'))}<br/>{_text(step.get('kind'))}"
        action = step.get("action")
        if isinstance(action, dict) and action.get("where") == "remote":
            label += f"<br/>{_text(action['participant'])}: {_text(action.get('command'))}"
        shape = _SHAPES.get(str(step.get("kind")), '["{}"]')
        lines.append(f"  s{i}" + shape.format(label))
        lines.append(f"  {previous} --> s{i}")
        previous = f"s{i}"
    lines.append(f"  {previous} --> completed((completed))")
    # Backwards: a failure before the point of no return undoes the steps before it, newest
    # first; past the pivot nothing is undone (a retriable step that cannot finish is stuck).
    undone = [i for i, s in enumerate(steps) if s.get("compensation") is not None]
    for i in undone:
        lines.append(f'  c{i}[/"undo {_text(steps[i].get("name"))}"/]')
    drawn_failed = False
    for i, step in enumerate(steps):
        if step.get("kind") == "retriable":
            break
        before = [j for j in undone if j < i]
        target = f"c{before[-1]}" if before else "failed"
        if target == "failed" and not drawn_failed:
            target, drawn_failed = "failed((failed))", True
        lines.append(f"  s{i} -. fails .-> {target}")
    for later, earlier in zip(undone[::-1], undone[::-1][1:], strict=False):
        lines.append(f"  c{later} -.-> c{earlier}")
    if undone:
        lines.append(f"  c{undone[0]} -.-> " + ("failed" if drawn_failed else "failed((failed))"))
    return "\n".join(lines)


def _text(value: JSON) -> str:
    # Mermaid ends a quoted label at a double quote: written as its entity instead.
    return str(value).replace('"', "#quot;")
