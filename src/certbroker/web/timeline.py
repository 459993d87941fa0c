"""The dashboard's timeline of expiry dates, laid out here and drawn as inline SVG by
the template: one dot per certificate on an axis of the next days."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

WIDTH = 800
LEFT, RIGHT = 40, 20
AXIS_Y = 130
DOT = 6
STEP = 14  # vertical distance between dots that would overlap


@dataclass(frozen=True)
class Dot:
    id: int
    name: str
    days_left: int
    x: float
    y: float
    urgency: str


@dataclass(frozen=True)
class Tick:
    x: float
    label: str


@dataclass(frozen=True)
class Timeline:
    width: int
    height: int
    axis_y: int
    left: int
    right: int
    days: int
    dots: list[Dot]
    ticks: list[Tick]
    marks: list[Tick]  # 7 and 30 days


def layout(entries: list[dict[str, Any]], days: int) -> Timeline:
    """Dots for `entries` (dashboard()["timeline"]: id, name, days_left), stacked upwards
    where they would overlap."""
    span = WIDTH - LEFT - RIGHT

    def x_of(day: float) -> float:
        return round(LEFT + max(0.0, min(day, days)) / days * span, 1)

    dots: list[Dot] = []
    stacks: dict[int, int] = {}
    for entry in entries:
        left = entry.get("days_left")
        if left is None:
            continue
        x = x_of(left)
        bucket = int(x // (DOT * 2))
        level = stacks.get(bucket, 0)
        stacks[bucket] = level + 1
        urgency = "urgent" if left < 7 else "soon" if left < 30 else "fine"
        dots.append(
            Dot(
                int(entry["id"]),
                str(entry["name"]),
                int(left),
                x,
                AXIS_Y - 12 - level * STEP,
                urgency,
            )
        )
    top = min((d.y for d in dots), default=AXIS_Y - 12)
    shift = max(0.0, 24 - top)  # a tall stack pushes the axis down
    dots = [Dot(d.id, d.name, d.days_left, d.x, d.y + shift, d.urgency) for d in dots]
    ticks = [
        Tick(x_of(day), "today" if day == 0 else f"+{day} d") for day in range(0, days + 1, 15)
    ]
    marks = [Tick(x_of(day), f"{day} days") for day in (7, 30) if day < days]
    return Timeline(
        width=WIDTH,
        height=int(AXIS_Y + shift + 30),
        axis_y=int(AXIS_Y + shift),
        left=LEFT,
        right=WIDTH - RIGHT,
        days=days,
        dots=dots,
        ticks=ticks,
        marks=marks,
    )
