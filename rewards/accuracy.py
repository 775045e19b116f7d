"""The accuracy reward: compare the answer text with the solution, by a per-sample method.

Datasets mix question types (counting, multiple choice, yes/no, math, free text), and each needs
its own notion of "the same answer". A sample names its method in ``accu_reward_method``; the
data loader validates that name against ``ACCURACY_METHODS`` before training, so a typo fails
early. At reward time an unknown name scores 0.0 with a warning rather than ending the run.

The compared text is the completion's ``scope``: its <answer> (even if cut off), never its
reasoning, and the whole text only when it has no tags at all. The solution is its <answer>
content if it has one, else the whole text.
"""

from __future__ import annotations

import ast
import logging
import math
import re
from collections.abc import Callable, Sequence
from typing import Any

from .parsing import Completion, extract_answer
from .registry import Sample, register_reward

logger = logging.getLogger(__name__)

NUMERIC_REL_TOL = 1e-6
"""Relative tolerance of numeric equality: forgives float printing, not a wrong digit."""

# 1,234.5 | 12 | -3.5 | .5 | 1e3. Thousands separators need groups of exactly three digits, so
# that a list such as "1,2" reads as two numbers.
_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?(?:[eE][-+]?\d+)?|[-+]?\.\d+")
_TRAILING_PUNCTUATION = ".,;:!?。"


# ---- text normalisation and extraction ---------------------------------------------------------


def normalise_text(text: str) -> str:
    """Casefold, collapse whitespace, strip, and drop trailing punctuation."""
    return " ".join(text.casefold().split()).rstrip(_TRAILING_PUNCTUATION).strip()


def _to_float(token: str) -> float | None:
    value = float(token.replace(",", ""))
    return value if math.isfinite(value) else None


def last_number(text: str) -> float | None:
    """The last number written in ``text`` (answers often restate the question first)."""
    matches = _NUMBER.findall(text)
    return _to_float(matches[-1]) if matches else None


def as_number(text: str) -> float | None:
    """``text`` as a number if the whole (normalised) text is one, else None."""
    text = normalise_text(text)
    return _to_float(text) if _NUMBER.fullmatch(text) else None


_MC_PATTERNS = (
    re.compile(r"\(?([A-Za-z])\)?[.:)]?"),  # the whole answer: "B", "(B)", "B.", "b"
    re.compile(r"(?i:answer)(?:\s+(?i:is))?\s*[:：]?\s*\(?([A-Z])(?![A-Za-z])"),  # "Answer: B"
    re.compile(r"\(?([A-Z])[).:](?:\s|$)"),  # leading "B) Paris", "(B) Paris", "B. Paris"
    re.compile(r"\(([A-Z])\)"),  # "(B)" anywhere
)
_STANDALONE_CAPITAL = re.compile(r"(?<![A-Za-z])([A-Z])(?![A-Za-z])")


def multiple_choice_letter(text: str) -> str | None:
    """The option letter (A-Z, uppercased) chosen in ``text``, or None if it is not clear."""
    text = text.strip()
    whole, after_answer, leading, bracketed = _MC_PATTERNS
    match = (
        whole.fullmatch(text)
        or after_answer.search(text)
        or leading.match(text)
        or bracketed.search(text)
    )
    if match:
        return match.group(1).upper()
    # Last resort: a single distinct standalone capital ("I" is a pronoun when others exist).
    letters = set(_STANDALONE_CAPITAL.findall(text))
    if len(letters) > 1:
        letters.discard("I")
    return letters.pop() if len(letters) == 1 else None


_YES_NO = re.compile(r"\b(yes|no)\b")


def yes_no(text: str) -> str | None:
    """The first whole-word "yes" or "no" in ``text`` (casefolded), or None."""
    match = _YES_NO.search(text.casefold())
    return match.group(1) if match else None


# ---- math: a safe symbolic path ----------------------------------------------------------------

_MAX_MATH_CHARS = 200
_MAX_POWER_BITS = 10_000  # refuse 9^9^9-style answers that would take forever to evaluate
_LATEX_REWRITES = (
    (re.compile(r"\\[dt]frac"), r"\\frac"),
    (re.compile(r"\\frac\{([^{}]*)\}\{([^{}]*)\}"), r"((\1)/(\2))"),
    (re.compile(r"\\frac(\d)(\d)"), r"((\1)/(\2))"),  # \frac12 shorthand
    (re.compile(r"\\sqrt\{([^{}]*)\}"), r"sqrt(\1)"),
)
_LATEX_NOISE = re.compile(r"\\left|\\right|\\[,;!: ]|\$")
_ARITHMETIC_ONLY = re.compile(r"(?:[0-9.+\-*/()\s]|sqrt)+")


def _last_boxed(text: str) -> str:
    """The content of the last \\boxed{...} (braces balanced), or ``text`` itself."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return text
    depth, begin = 0, start + len("\\boxed{")
    for i in range(begin, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            if depth == 0:
                return text[begin:i]
            depth -= 1
    return text


def latex_to_arithmetic(text: str) -> str | None:
    """Plain arithmetic (digits, + - * / **, parentheses, sqrt) from a LaTeX answer, else None."""
    text = _LATEX_NOISE.sub("", _last_boxed(text))
    text = text.rsplit("=", 1)[-1].strip()  # "x = 3" -> "3"
    if not text or len(text) > _MAX_MATH_CHARS:
        return None
    for _ in range(20):  # innermost \frac and \sqrt first; a bounded number of passes
        rewritten = text
        for pattern, replacement in _LATEX_REWRITES:
            rewritten = pattern.sub(replacement, rewritten)
        if rewritten == text:
            break
        text = rewritten
    text = text.replace("\\cdot", "*").replace("\\times", "*").replace("^", "**")
    text = text.replace("{", "(").replace("}", ")")
    text = re.sub(r"(\d|\))\s*(sqrt|\()", r"\1*\2", text)  # implicit products: 2sqrt(3), 2(3)
    return text if _ARITHMETIC_ONLY.fullmatch(text) else None


def _to_sympy(node: ast.AST) -> Any:
    """Build a sympy number from a whitelisted arithmetic syntax tree (never ``eval``)."""
    import sympy

    if isinstance(node, ast.Expression):
        return _to_sympy(node.body)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return sympy.Rational(str(node.value))  # exact: 0.1 stays 1/10
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
        operand = _to_sympy(node.operand)
        return -operand if isinstance(node.op, ast.USub) else operand
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "sqrt":
        if len(node.args) != 1 or node.keywords:
            raise ValueError("sqrt takes one argument")
        return sympy.sqrt(_to_sympy(node.args[0]))
    if isinstance(node, ast.BinOp):
        left, right = _to_sympy(node.left), _to_sympy(node.right)
        if isinstance(node.op, ast.Add):
            return left + right
        if isinstance(node.op, ast.Sub):
            return left - right
        if isinstance(node.op, ast.Mult):
            return left * right
        if isinstance(node.op, ast.Div):
            return left / right
        if isinstance(node.op, ast.Pow):
            _check_power_size(left, right)
            return left**right
    raise ValueError(f"not plain arithmetic: {ast.dump(node)[:80]}")


def _check_power_size(base: Any, exponent: Any) -> None:
    if not exponent.is_Rational or abs(exponent) > 1000:
        raise ValueError("exponent too large or not a rational number")
    if base.is_Rational:
        bits = max(int(base.p).bit_length(), int(base.q).bit_length())
        if bits * abs(exponent) > _MAX_POWER_BITS:
            raise ValueError("power too large to evaluate")


def symbolic_equal(answer: str, solution: str) -> bool | None:
    """Whether two arithmetic answers are equal as exact numbers; None if either is unreadable."""
    answer_expr, solution_expr = latex_to_arithmetic(answer), latex_to_arithmetic(solution)
    if answer_expr is None or solution_expr is None:
        return None
    try:
        import sympy

        a = _to_sympy(ast.parse(answer_expr, mode="eval"))
        b = _to_sympy(ast.parse(solution_expr, mode="eval"))
        if not (a.is_finite and b.is_finite):  # division by zero gives zoo
            return None
        if a == b:
            return True
        difference = abs(sympy.N(a - b, 30))
        return bool(difference <= 1e-12 * max(1, abs(sympy.N(b, 30))))
    except Exception:  # noqa: BLE001 - any surprise from an arbitrary string means "unreadable"
        return None


def _math_verify_equal(answer: str, solution: str) -> bool:
    """The optional math_verify package (extra "math"); False when it is absent or fails."""
    try:
        import math_verify
    except ImportError:
        return False
    try:
        return bool(math_verify.verify(math_verify.parse(solution), math_verify.parse(answer)))
    except Exception:  # noqa: BLE001 - it uses signal timeouts that fail off the main thread
        return False


# ---- the methods -------------------------------------------------------------------------------


def exact_score(answer: str, solution: str) -> float:
    """Normalised string equality."""
    return float(normalise_text(answer) == normalise_text(solution))


def numeric_score(answer: str, solution: str) -> float:
    """The last numbers of both are equal up to ``NUMERIC_REL_TOL``."""
    a, b = last_number(answer), last_number(solution)
    if a is None or b is None:
        return 0.0
    return float(math.isclose(a, b, rel_tol=NUMERIC_REL_TOL, abs_tol=1e-12))


def multiple_choice_score(answer: str, solution: str) -> float:
    """The same option letter."""
    a, b = multiple_choice_letter(answer), multiple_choice_letter(solution)
    return float(a is not None and a == b)


def yes_no_score(answer: str, solution: str) -> float:
    """The same first yes/no."""
    a, b = yes_no(answer), yes_no(solution)
    return float(a is not None and a == b)


def math_score(answer: str, solution: str) -> float:
    """Symbolic equality (math_verify if installed, else a safe sympy path), else numeric."""
    if _math_verify_equal(answer, solution):
        return 1.0
    equal = symbolic_equal(answer, solution)
    return float(equal) if equal is not None else numeric_score(answer, solution)


def fuzzy_score(answer: str, solution: str) -> float:
    """Levenshtein (indel) ratio in [0, 1] of the normalised texts: partial credit for free text."""
    from rapidfuzz import fuzz

    a, b = normalise_text(answer), normalise_text(solution)
    if not a or not b:
        return float(a == b)
    return fuzz.ratio(a, b) / 100.0


def default_score(answer: str, solution: str) -> float:
    """Exact match; else numeric equality if both are numbers; else the fuzzy ratio."""
    if exact_score(answer, solution) == 1.0:
        return 1.0
    a, b = as_number(answer), as_number(solution)
    if a is not None and b is not None:
        return float(math.isclose(a, b, rel_tol=NUMERIC_REL_TOL, abs_tol=1e-12))
    return fuzzy_score(answer, solution)


ACCURACY_SCORERS: dict[str, Callable[[str, str], float]] = {
    "default": default_score,
    "exact": exact_score,
    "numeric": numeric_score,
    "mc": multiple_choice_score,
    "yes_no": yes_no_score,
    "math": math_score,
    "fuzzy": fuzzy_score,
}
ACCURACY_METHODS: tuple[str, ...] = tuple(ACCURACY_SCORERS)
"""The valid values of a sample's ``accu_reward_method`` (None means "default")."""


def check_accuracy_method(method: str | None) -> str:
    """The method to use for ``method`` (None -> "default"); unknown names raise ValueError."""
    if method is None:
        return "default"
    if method not in ACCURACY_SCORERS:
        raise ValueError(
            f"unknown accu_reward_method {method!r}; valid: {', '.join(ACCURACY_METHODS)}"
        )
    return method


def accuracy_score(completion: Completion, sample: Sample) -> float:
    """Score one completion with its sample's method; an unknown method scores 0.0 and warns."""
    method = sample.get("accu_reward_method") or "default"
    scorer = ACCURACY_SCORERS.get(method) if isinstance(method, str) else None
    if scorer is None:
        logger.warning(
            "unknown accu_reward_method %r scored 0.0; valid: %s",
            method,
            ", ".join(ACCURACY_METHODS),
        )
        return 0.0
    solution = sample["solution"]
    truth = extract_answer(solution) or solution
    return scorer(completion.scope, truth)


@register_reward("accuracy")
def accuracy_reward(
    completions: Sequence[Completion], samples: Sequence[Sample]
) -> list[float | None]:
    """Per-sample accuracy, dispatched on ``sample["accu_reward_method"]`` (default: "default")."""
    return [accuracy_score(c, s) for c, s in zip(completions, samples, strict=True)]
