"""What happens to the tool calls of one model round: who decides, what runs, what the model reads.

`plan_round` sorts each call the model made, without running anything:
- refused: unknown or blocked tool, or arguments that are not valid for its schema. The model
  gets the reason as an error result; the tool never sees the call.
- run: needs no approval (its rule, the organization's mode, the chat's "always allow", or the
  next step of an approved plan).
- ask: waits for the session owner's decision, stored (`ai_tool_executions`), never in memory.
- propose: the built-in plan tool (`action_plan` mode): the plan waits for one approval.

Approval rules (`CatalogTool.approval`, from the tool server's configuration):
    always: asks in every mode;  never: never asks;
    destructive: in per_step mode, asks unless the tool is read-only; in auto_approve mode,
    asks only if the tool is destructive. Hints about a tool count only from a trusted server.
A paused session asks as in per_step mode. Tool output never changes any of this: decisions
come only from the owner's requests.

Imports chat, providers, tools and the standard library; never the store or the web layer.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from parley.providers.base import ToolCallReady, ToolSpec
from parley.tools import CatalogTool, InvalidArguments, ToolCatalog

ApprovalMode = Literal["per_step", "auto_approve", "action_plan"]
APPROVAL_MODES: tuple[ApprovalMode, ...] = ("per_step", "auto_approve", "action_plan")

PLAN_TOOL = "propose_action_plan"  # no "__": it can never clash with a tool server's tool
MAX_PLAN_STEPS = 20

# What the model reads for a call that did not run.
DENIED = "The user declined this tool call."
EXPIRED = "The user did not approve this tool call in time; it was not run."
PLAN_APPROVED = "The user approved the plan. Carry out its steps in order, one tool call per step."
PLAN_REJECTED = "The user rejected the plan; none of its steps will run. Ask what they would like instead."


@dataclass(frozen=True, slots=True)
class ActivePlan:
    """An approved plan being carried out: calls matching its next step run without asking."""

    id: str
    steps: tuple[dict[str, Any], ...]
    current_step: int

    def matches(self, step_index: int, tool_name: str, arguments: dict[str, Any]) -> bool:
        """Whether a call carries out step `step_index`: the same tool, and every argument the
        step names has the value the step gave it."""
        if not self.current_step <= step_index < len(self.steps):
            return False
        step = self.steps[step_index]
        wanted = step.get("input") or {}
        return step.get("toolName") == tool_name and all(arguments.get(k) == v for k, v in wanted.items())


@dataclass(frozen=True, slots=True)
class ApprovalPolicy:
    """Who decides in this session: the organization's mode, the session's pause and its
    always-allowed tools, and an approved plan if one is running."""

    mode: ApprovalMode = "per_step"
    paused: bool = False
    allowed: frozenset[str] = frozenset()
    plan: ActivePlan | None = None

    @property
    def effective_mode(self) -> ApprovalMode:
        return "per_step" if self.paused else self.mode

    @property
    def offers_plans(self) -> bool:
        return self.effective_mode == "action_plan" and self.plan is None

    def asks(self, tool: CatalogTool) -> bool:
        if tool.name in self.allowed or tool.approval == "never":
            return False
        if tool.approval == "always":
            return True
        if self.effective_mode == "auto_approve":
            return tool.destructive
        return not tool.read_only


def plan_tool(offered: Sequence[ToolSpec]) -> CatalogTool:
    """The built-in tool through which the model proposes a plan of calls to `offered` tools."""
    schema = {
        "type": "object",
        "properties": {
            "title": {"type": "string", "minLength": 1, "maxLength": 200},
            "steps": {
                "type": "array",
                "minItems": 1,
                "maxItems": MAX_PLAN_STEPS,
                "items": {
                    "type": "object",
                    "properties": {
                        "toolName": {"type": "string", "enum": [spec.name for spec in offered]},
                        "input": {"type": "object"},
                        "reasoning": {"type": "string", "maxLength": 1000},
                    },
                    "required": ["toolName", "input"],
                    "additionalProperties": False,
                },
            },
        },
        "required": ["title", "steps"],
        "additionalProperties": False,
    }
    return CatalogTool(
        name=PLAN_TOOL,
        server="parley",
        tool=PLAN_TOOL,
        description=(
            "Propose a plan: the tool calls you intend to make, in order, each with its arguments and "
            "why. The user approves the whole plan once; then make the calls, one per step. Propose a "
            "plan before any tool call that changes something."
        ),
        input_schema=schema,
        approval="always",
        read_only=True,
        destructive=False,
        timeout=0.0,
        blocked=None,
    )


def offered_tools(catalog: ToolCatalog | None, policy: ApprovalPolicy) -> list[ToolSpec]:
    """The tools the model may call in this session, the plan tool included when it applies."""
    if catalog is None:
        return []
    specs = catalog.specs()
    if specs and policy.offers_plans:
        tool = plan_tool(specs)
        specs = [*specs, ToolSpec(name=tool.name, description=tool.description, input_schema=tool.input_schema)]
    return specs


Disposition = Literal["refused", "run", "ask", "propose"]


@dataclass(slots=True, kw_only=True)
class PlannedCall:
    """One call of a round and what happens to it (see the module docstring)."""

    execution_id: str
    index: int
    call_id: str
    name: str
    arguments: dict[str, Any]
    disposition: Disposition
    tool: CatalogTool | None = None
    refusal: str | None = None  # why it did not run (or a decided plan's answer): the model reads this
    answer_is_error: bool = True
    plan_id: str | None = None  # the plan it proposes, or the running plan whose step it carries out
    plan_step: int | None = None  # that step

    @property
    def input_hash(self) -> str:
        return arguments_hash(self.arguments)

    def call_part(self) -> dict[str, Any]:
        return {
            "type": "tool_call",
            "toolUseId": self.call_id,
            "toolName": self.name,
            "input": self.arguments,
            "executionId": self.execution_id,
        }


def arguments_hash(arguments: dict[str, Any]) -> str:
    """The hash an approval is bound to: sha256 of the arguments' canonical JSON."""
    return hashlib.sha256(orjson.dumps(arguments, option=orjson.OPT_SORT_KEYS)).hexdigest()


def result_part(call_id: str, name: str, output: str, *, is_error: bool, truncated: bool = False) -> dict[str, Any]:
    return {
        "type": "tool_result",
        "toolUseId": call_id,
        "toolName": name,
        "output": output,
        "isError": is_error,
        "truncated": truncated,
    }


def plan_round(
    calls: Sequence[ToolCallReady],
    *,
    catalog: ToolCatalog | None,
    policy: ApprovalPolicy,
    offered: Sequence[ToolSpec],
    new_id: Any,
) -> list[PlannedCall]:
    """Sort a round's calls (see the module docstring); nothing runs and nothing is stored here."""
    planned: list[PlannedCall] = []
    plan = policy.plan
    next_step = plan.current_step if plan is not None else 0
    offered_names = {spec.name for spec in offered}
    for index, call in enumerate(calls):
        entry = PlannedCall(
            execution_id=new_id(),
            index=index,
            call_id=call.call_id,
            name=call.name,
            arguments={},
            disposition="refused",
        )
        planned.append(entry)
        if catalog is None or call.name not in offered_names:
            tool = catalog.get(call.name) if catalog is not None else None
            entry.refusal = (
                f"The tool {call.name!r} cannot be used: {tool.blocked}"
                if tool is not None and tool.blocked
                else f"There is no tool named {call.name!r} here. Use only the tools you were given."
            )
            continue
        tool = plan_tool(catalog.specs()) if call.name == PLAN_TOOL else catalog.get(call.name)
        if tool is None:  # offered a moment ago, gone now (its server's list changed)
            entry.refusal = f"The tool {call.name!r} is no longer available."
            continue
        entry.tool = tool
        try:
            entry.arguments = catalog.parse_arguments(tool, call.arguments)
        except InvalidArguments as exc:
            entry.refusal = f"The arguments are not valid for {call.name}: {exc.message} The tool was not run."
            continue
        if tool.name == PLAN_TOOL:
            entry.disposition = "propose"
        elif tool.blocked:
            entry.refusal = f"The tool {call.name!r} cannot be used: {tool.blocked}"
        elif plan is not None and plan.matches(next_step, tool.name, entry.arguments):
            entry.disposition = "run"
            entry.plan_id = plan.id
            entry.plan_step = next_step
            next_step += 1
        else:
            entry.disposition = "ask" if policy.asks(tool) else "run"
    return planned


def description_of(tool: CatalogTool | None, limit: int = 500) -> str:
    """What an approval card says the tool does: its description, first paragraph, shortened."""
    if tool is None:
        return ""
    text = tool.description.strip().split("\n\n", 1)[0].strip()
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"
