"""``physics``: kinematics, dynamics and energy problems with units (offline, generated).

    >>> task = get_task("physics", level=2, seed=0)
    >>> task.examples("val", 1)[0].inputs["question"]
    'A car starts from rest and accelerates at 2 m/s^2 for 3 s. How far does it travel, in m?'

Levels:
  1  one formula, one multiplication or division   (d = v t, F = m a, v = a t, p = m v, W = F d)
  2  one formula with a square or a constant        (d = a t^2 / 2, KE = m v^2 / 2, PE = m g h, P = W / t)
  3  two steps                                       (v = sqrt(2 g h), stopping distance, km/h -> m/s)
  4  two or three steps with unit conversions        (grams, minutes, km/h)

Scoring: the number in the last ``Answer: <number> <unit>`` line must be within 2% (relative) of the
answer. The unit may be left out; a *different* unit (``60 km`` when metres were asked for) is wrong,
and the feedback says so. Feedback gives expected value and unit, what was produced, and the formula.
"""

from __future__ import annotations

import math
import random
import re

from fst_lab.tasks.base import Score, extract_answer, register_task
from fst_lab.tasks.common import (GeneratedTask, calculator, format_number, length_note,
                                  missing_answer_feedback, python_tool)

G = 9.8
REL_TOL = 0.02

_OBJECTS = ["car", "cart", "cyclist", "runner", "train", "boat", "sled", "drone", "skater", "bus"]
_MASSIVE = ["box", "crate", "cart", "ball", "block", "sled", "trolley", "stone"]

# Spellings of each unit, normalised (lower case, no spaces, ^2 for squares).
_UNIT_ALIASES = {
    "m": ["m", "meter", "meters", "metre", "metres"],
    "km": ["km", "kilometer", "kilometers", "kilometre", "kilometres"],
    "s": ["s", "sec", "secs", "second", "seconds"],
    "m/s": ["m/s", "mps", "meterspersecond", "metrespersecond", "meter/second", "meters/second", "ms^-1", "m/sec"],
    "m/s^2": ["m/s^2", "m/s/s", "ms^-2", "meterspersecondsquared", "metrespersecondsquared", "m/sec^2"],
    "n": ["n", "newton", "newtons"],
    "j": ["j", "joule", "joules"],
    "kj": ["kj", "kilojoule", "kilojoules"],
    "w": ["w", "watt", "watts"],
    "kg*m/s": ["kg*m/s", "kgm/s", "kg.m/s", "kg·m/s", "n*s", "ns", "n.s", "n·s"],
    "kg": ["kg", "kilogram", "kilograms"],
    "g": ["g", "gram", "grams"],
    "km/h": ["km/h", "kmh", "kph", "km/hr", "kilometersperhour", "kilometresperhour"],
}
_UNIT_OF = {alias: canon for canon, aliases in _UNIT_ALIASES.items() for alias in aliases}


def normalise_unit(text: str) -> str | None:
    """'metres per second' -> 'm/s'; unknown text -> None."""
    t = text.strip().strip(".,;:()[]").lower().replace("²", "^2").replace(" ", "").replace("**", "^")
    t = t.replace("persecondsquared", "/s^2").replace("persecond", "/s")
    if t in _UNIT_OF:
        return _UNIT_OF[t]
    if re.fullmatch(r"m/s2", t):
        return "m/s^2"
    return None


def _problem(rng: random.Random, level: int):
    """(question, answer, unit, formula) for one problem of this level."""
    obj, thing = rng.choice(_OBJECTS), rng.choice(_MASSIVE)
    kind = rng.choice({1: ["dvt", "fma", "vat", "pmv", "wfd", "vdt"],
                       2: ["d_accel", "ke", "pe", "power", "vuat"],
                       3: ["drop_speed", "stop_dist", "kmh_dist", "accel_avg", "ke_from_drop"],
                       4: ["drop_ke_grams", "kmh_minutes", "power_lift", "brake_force"]}[level])
    if kind == "dvt":
        v, t = rng.randint(2, 30), rng.randint(2, 20)
        return (f"A {obj} moves at a constant {v} m/s for {t} s. How far does it travel, in m?", v * t, "m",
                f"d = v t = {v} x {t}")
    if kind == "fma":
        m, a = rng.randint(2, 50), rng.randint(1, 10)
        return (f"A net force accelerates a {m} kg {thing} at {a} m/s^2. What is the net force, in N?", m * a, "N",
                f"F = m a = {m} x {a}")
    if kind == "vat":
        a, t = rng.randint(1, 9), rng.randint(2, 12)
        return (f"A {obj} starts from rest and accelerates at {a} m/s^2 for {t} s. What is its final speed, "
                f"in m/s?", a * t, "m/s", f"v = a t = {a} x {t}")
    if kind == "pmv":
        m, v = rng.randint(2, 40), rng.randint(2, 25)
        return (f"A {m} kg {thing} moves at {v} m/s. What is its momentum, in kg*m/s?", m * v, "kg*m/s",
                f"p = m v = {m} x {v}")
    if kind == "wfd":
        f, d = rng.randint(5, 60), rng.randint(2, 20)
        return (f"A constant force of {f} N pushes a {thing} {d} m in the direction of the force. How much work "
                f"does the force do, in J?", f * d, "J", f"W = F d = {f} x {d}")
    if kind == "vdt":
        t, v = rng.randint(2, 12), rng.randint(2, 20)
        return (f"A {obj} covers {v * t} m in {t} s at constant speed. What is its speed, in m/s?", v, "m/s",
                f"v = d / t = {v * t} / {t}")
    if kind == "d_accel":
        a, t = rng.randint(1, 8), rng.randint(2, 10)
        return (f"A {obj} starts from rest and accelerates at {a} m/s^2 for {t} s. How far does it travel, in m?",
                0.5 * a * t * t, "m", f"d = a t^2 / 2 = {a} x {t}^2 / 2")
    if kind == "ke":
        m, v = rng.randint(1, 20), rng.randint(2, 15)
        return (f"A {m} kg {thing} moves at {v} m/s. What is its kinetic energy, in J?", 0.5 * m * v * v, "J",
                f"KE = m v^2 / 2 = {m} x {v}^2 / 2")
    if kind == "pe":
        m, h = rng.randint(1, 20), rng.randint(2, 30)
        return (f"A {m} kg {thing} is lifted {h} m. How much gravitational potential energy does it gain, in J? "
                f"Use g = 9.8 m/s^2.", m * G * h, "J", f"PE = m g h = {m} x 9.8 x {h}")
    if kind == "power":
        t, p = rng.randint(2, 20), rng.randint(5, 100)
        return (f"A motor does {p * t} J of work in {t} s. What is its average power, in W?", p, "W",
                f"P = W / t = {p * t} / {t}")
    if kind == "vuat":
        u, a, t = rng.randint(1, 20), rng.randint(1, 6), rng.randint(2, 10)
        return (f"A {obj} moving at {u} m/s accelerates at {a} m/s^2 for {t} s. What is its final speed, in m/s?",
                u + a * t, "m/s", f"v = u + a t = {u} + {a} x {t}")
    if kind == "drop_speed":
        h = rng.randint(2, 80)
        return (f"A {thing} is dropped from rest from a height of {h} m. Ignoring air resistance, how fast is it "
                f"moving just before it hits the ground, in m/s? Use g = 9.8 m/s^2.", math.sqrt(2 * G * h), "m/s",
                f"v = sqrt(2 g h) = sqrt(2 x 9.8 x {h})")
    if kind == "stop_dist":
        v, a = rng.randint(5, 30), rng.randint(2, 8)
        return (f"A {obj} moving at {v} m/s brakes with a constant deceleration of {a} m/s^2. How far does it "
                f"travel before stopping, in m?", v * v / (2 * a), "m", f"d = v^2 / (2 a) = {v}^2 / (2 x {a})")
    if kind == "kmh_dist":
        kmh, t = rng.choice([18, 36, 54, 72, 90, 108]), rng.randint(5, 60)
        return (f"A {obj} travels at a constant {kmh} km/h for {t} s. How far does it go, in m?", kmh / 3.6 * t,
                "m", f"v = {kmh} / 3.6 = {format_number(kmh / 3.6)} m/s; d = v t = {format_number(kmh / 3.6)} x {t}")
    if kind == "accel_avg":
        u, v, t = rng.randint(0, 10), rng.randint(11, 30), rng.randint(2, 12)
        return (f"A {obj} speeds up uniformly from {u} m/s to {v} m/s in {t} s. How far does it travel in that "
                f"time, in m?", (u + v) / 2 * t, "m", f"d = (u + v) / 2 x t = ({u} + {v}) / 2 x {t}")
    if kind == "ke_from_drop":
        m, h = rng.randint(1, 10), rng.randint(2, 40)
        return (f"A {m} kg {thing} falls from rest through {h} m. Ignoring air resistance, what is its kinetic "
                f"energy just before landing, in J? Use g = 9.8 m/s^2.", m * G * h, "J",
                f"KE = loss of PE = m g h = {m} x 9.8 x {h}")
    if kind == "drop_ke_grams":
        g, h = rng.choice([100, 200, 250, 400, 500, 800]), rng.randint(2, 40)
        return (f"A {g} g {thing} is dropped from a height of {h} m. Ignoring air resistance, what is its kinetic "
                f"energy just before it lands, in J? Use g = 9.8 m/s^2.", g / 1000 * G * h, "J",
                f"m = {g} g = {g / 1000} kg; KE = m g h = {g / 1000} x 9.8 x {h}")
    if kind == "kmh_minutes":
        kmh, mins = rng.choice([36, 45, 54, 60, 72, 90]), rng.randint(2, 30)
        return (f"A {obj} travels at a constant {kmh} km/h for {mins} minutes. How far does it go, in m?",
                kmh * 1000 / 60 * mins, "m", f"d = {kmh} km/h x {mins} min = {kmh} x 1000 / 60 x {mins} m")
    if kind == "power_lift":
        m, h, t = rng.randint(10, 200), rng.randint(2, 20), rng.randint(2, 30)
        return (f"A crane lifts a {m} kg load {h} m at constant speed in {t} s. What is its average power output, "
                f"in W? Use g = 9.8 m/s^2.", m * G * h / t, "W", f"P = m g h / t = {m} x 9.8 x {h} / {t}")
    if kind == "brake_force":
        m, v, d = rng.randint(500, 2000), rng.randint(5, 30), rng.randint(10, 80)
        return (f"A {m} kg car moving at {v} m/s brakes to a stop over {d} m. What is the magnitude of the average "
                f"braking force, in N?", m * v * v / (2 * d), "N",
                f"a = v^2 / (2 d) = {v}^2 / (2 x {d}); F = m a = {m} x a")
    raise ValueError(kind)


@register_task("physics")
class PhysicsTask(GeneratedTask):
    """Kinematics and energy problems with units; see the module docstring."""

    name = "physics"
    levels = (1, 2, 3, 4)
    answer_format = "End with a line 'Answer: <number> <unit>'."

    def make(self, rng: random.Random, index: int):
        q, ans, unit, formula = _problem(rng, self.level)
        return q, float(ans), {"unit": unit, "formula": formula}

    def tool_impls(self):
        return {"calculator": calculator, "python": python_tool}

    def score(self, example, trajectory) -> Score:
        expected, unit = float(example.answer), example.meta.get("unit", "")
        exp_s = f"{format_number(expected)} {unit}".strip()
        text = trajectory.final_text or ""
        note = length_note(trajectory)
        raw = extract_answer(text)
        if raw is None:
            return Score(0.0, missing_answer_feedback(exp_s, text, self.answer_format) + note)
        got, got_unit_text = parse_quantity(raw)
        if got is None:
            return Score(0.0, f"Parse failure: the answer line 'Answer: {raw}' contains no number. "
                              f"Expected {exp_s}. {self.answer_format}{note}")
        got_unit = normalise_unit(got_unit_text) if got_unit_text else None
        want_unit = normalise_unit(unit) if unit else None
        value_ok = math.isclose(got, expected, rel_tol=REL_TOL, abs_tol=1e-9)
        formula = example.meta.get("formula")
        produced = f"{format_number(got)} {got_unit_text}".strip()
        if got_unit_text and got_unit is not None and want_unit is not None and got_unit != want_unit:
            why = (f"Wrong unit: the answer was {produced}, but the question asks for {unit}; "
                   f"expected {exp_s}.")
            if not value_ok:
                why += f" The value is also wrong (formula: {formula})."
            return Score(0.0, why + note)
        if not value_ok:
            return Score(0.0, f"Wrong value: expected {exp_s} (within {REL_TOL:.0%}), but the answer was {produced}. "
                              f"Formula: {formula}.{note}")
        tip = ""
        if not got_unit_text:
            tip = f" (Tip: state the unit, {unit}.)"
        elif got_unit is None:
            tip = f" (The unit '{got_unit_text}' was not recognised; expected {unit}.)"
        return Score(1.0, f"Correct: {exp_s}.{tip}{note}")


_NUM = re.compile(r"[-+]?(?:\d[\d,]*\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def parse_quantity(text: str) -> tuple[float | None, str]:
    """'v = 2 x 3 = 6 m/s' -> (6.0, 'm/s'): the value after the last '=', then the unit text after it."""
    part = text.rsplit("=", 1)[-1] if "=" in text and _NUM.search(text.rsplit("=", 1)[-1]) else text
    m = _NUM.search(part)
    if not m:
        return None, ""
    try:
        value = float(m.group(0).replace(",", ""))
    except ValueError:
        return None, ""
    rest = part[m.end():].strip()
    # scientific notation written out: 6.0 x 10^1
    sci = re.match(r"(?:x|\*|×)\s*10\s*\^\s*([-+]?\d+)\s*(.*)", rest)
    if sci:
        value *= 10 ** int(sci.group(1))
        rest = sci.group(2)
    unit = rest.split("(")[0].strip().rstrip(".")
    # Drop words after the unit ("m/s before hitting the ground" -> "m/s"), keep "meters per second".
    words = unit.split()
    if len(words) > 1 and normalise_unit(unit) is None:
        for k in range(len(words), 0, -1):
            if normalise_unit(" ".join(words[:k])) is not None:
                unit = " ".join(words[:k])
                break
        else:
            unit = words[0]
    return value, unit
