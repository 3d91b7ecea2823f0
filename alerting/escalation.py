"""The escalation scheduler: which rung of a policy is due for an unacknowledged alert.

Pure: the per-alert state (next step, repeats) lives on the alert record; ``due_steps`` says
what to notify at ``now`` and how the state advances. Steps with no delay are sent with the
alert's first (grouped) notification, so the scheduler starts after them.
"""

from __future__ import annotations

from dataclasses import dataclass

from alerting.config import EscalationPolicy


@dataclass(frozen=True, slots=True)
class StepDue:
    """A rung to notify now: its index, the repeat count, and its targets."""

    step: int
    repeat: int
    targets: tuple[str, ...]


def first_step(policy: EscalationPolicy) -> int:
    """Index of the first step the scheduler owns (the immediate ones go with the first notification)."""
    i = 0
    while i < len(policy.steps) and policy.steps[i].delay_s <= 0:
        i += 1
    return i


def immediate_targets(policy: EscalationPolicy) -> list[str]:
    """Targets of the steps with no delay."""
    return [t for s in policy.steps if s.delay_s <= 0 for t in s.targets]


def next_time(policy: EscalationPolicy, anchor: float, next_step: int, repeats: int) -> float | None:
    """When the next rung is due, or None when the ladder is finished."""
    if next_step < len(policy.steps):
        return anchor + policy.steps[next_step].delay_s
    if policy.repeat_s and policy.steps:
        return anchor + policy.steps[-1].delay_s + policy.repeat_s * (repeats + 1)
    return None


def due_steps(policy: EscalationPolicy, anchor: float, next_step: int, repeats: int,
              now: float) -> tuple[list[StepDue], int, int]:
    """Rungs due at ``now`` and the advanced (next_step, repeats).

    Several rungs may be due at once after downtime; each is returned once. Repeats after the last
    rung are collapsed to one (a restart after an hour sends one reminder, not sixty).
    """
    out: list[StepDue] = []
    while next_step < len(policy.steps) and anchor + policy.steps[next_step].delay_s <= now:
        out.append(StepDue(next_step, 0, tuple(policy.steps[next_step].targets)))
        next_step += 1
    if next_step >= len(policy.steps) and policy.repeat_s and policy.steps:
        last = policy.steps[-1]
        base = anchor + last.delay_s
        n = int((now - base) // policy.repeat_s) if now >= base else 0
        if n > repeats:
            if not out:
                out.append(StepDue(len(policy.steps) - 1, n, tuple(last.targets)))
            repeats = n
    return out, next_step, repeats
