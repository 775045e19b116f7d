"""The accuracy reward: compare the answer text with the solution, by a per-sample method.

Datasets mix question types (counting, multiple choice, yes/no, math, free text), and each needs
its own notion of "the same answer". A sample names its method in ``accu_reward_method``; the
data loader validates that name against ``ACCURACY_METHODS`` before training, so a typo fails
early. At reward time an unknown name scores 0.0 with a warning rather than ending the run.
A sample without one gets "default", which scores VLM-R1 data as VLM-R1's own default does (and
a little more): exact, then the choice letter, then math, then the fuzzy ratio.

The compared text is the completion's ``scope``: its <answer> (even if cut off), never its
reasoning, and the whole text only when it has no tags at all. The solution is its <answer>
content if it has one, else the whole text.
"""

from __future__ import annotations

import ast
import functools
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


# The spellings of a chosen option. Lower case counts where it cannot be a word: alone, in
# brackets, as a leading "b)" / "b." label, or ending the sentence after "answer is".
_LETTER_ALONE = re.compile(r"\(?([A-Za-z])\)?[.:)]?")  # the whole text: "B", "(B)", "B.", "b)"
_LETTER_LABEL = re.compile(r"\(?([A-Za-z])(?:\)[.:]?|[.:])\s+(\S.*)", re.DOTALL)  # "B. Paris"
_LETTER_AFTER_ANSWER = re.compile(
    r"\b(?i:answer|option|choice)\b(?:\s+(?i:is|would be|should be)\b)?\s*[:：]?\s*"
    r"(?:\(([A-Za-z])\)|([A-Z])(?![A-Za-z])|([a-z])(?=\s*(?:$|[.,;!?])))"
)  # "The answer is B", "Answer: (b)", "the correct option is c."
_BRACKETED_CAPITAL = re.compile(r"\(([A-Z])\)")
_STANDALONE_CAPITAL = re.compile(r"(?<![A-Za-z])([A-Z])(?![A-Za-z])")
_WORD_FOLLOWS = re.compile(r"\s+[a-z]")  # "A cat", "I think": an article or a pronoun


def multiple_choice_letter(text: str) -> str | None:
    """The option letter (A-Z, uppercased) chosen in ``text``, or None if it is not clear.

    Tried in order: the whole text is a letter ("B", "(b)", "B."); a leading label ("B. Paris",
    "(B) Paris", "b) paris"); the last letter after "answer/option/choice (is)"; the one distinct
    bracketed capital; the one distinct standalone capital. A capital inside a word never counts
    ("Bus" is not B), nor "A"/"I" before a lower-case word ("A cat", "I think").
    """
    text = text.strip()
    match = _LETTER_ALONE.fullmatch(text) or _LETTER_LABEL.match(text)
    if match:
        return match.group(1).upper()
    anchored = list(_LETTER_AFTER_ANSWER.finditer(text))
    if anchored:
        return next(g for g in anchored[-1].groups() if g).upper()
    bracketed = set(_BRACKETED_CAPITAL.findall(text))
    if len(bracketed) == 1:
        return bracketed.pop()
    letters = {
        m.group(1)
        for m in _STANDALONE_CAPITAL.finditer(text)
        if not (m.group(1) in "AI" and _WORD_FOLLOWS.match(text, m.end()))
    }
    if len(letters) > 1:
        letters.discard("I")  # "I" is a pronoun when another letter is there
    return letters.pop() if len(letters) == 1 else None


def solution_option(solution: str) -> tuple[str, str] | None:
    """(letter, option text) if the whole solution names an option, else None.

    Strict, because it decides whether a sample is multiple choice at all: "B", "(B)", "B.",
    "B)" (text "") or "B. Paris", "(B) Paris" (text "Paris"). "Vitamin C" or "A cat" is no option.
    """
    text = solution.strip()
    alone = _LETTER_ALONE.fullmatch(text)
    if alone:
        return alone.group(1).upper(), ""
    label = _LETTER_LABEL.fullmatch(text)
    if label:
        return label.group(1).upper(), label.group(2).strip()
    return None


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


_THOUSANDS_COMMA = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")


def arithmetic_value(text: str) -> Any | None:
    """``text`` as an exact, finite sympy number, or None if it is not plain arithmetic.

    Reads "42", "0.5", "1,000", "1/2", "-3.", "\\frac{1}{2}", "2\\sqrt{3}", "x = 2^{10}".
    """
    text = _THOUSANDS_COMMA.sub("", text.strip().rstrip(_TRAILING_PUNCTUATION))
    expr = latex_to_arithmetic(text)
    if expr is None:
        return None
    try:
        value = _to_sympy(ast.parse(expr, mode="eval"))
    except Exception:  # noqa: BLE001 - any surprise from an arbitrary string means "unreadable"
        return None
    return value if value.is_finite else None  # division by zero gives zoo, 0/0 nan


def _same_number(a: Any, b: Any) -> bool:
    """Exact equality, or a difference below 1e-12 relative (sqrt(8) against 2 sqrt(2))."""
    try:
        import sympy

        if a == b:
            return True
        difference = abs(sympy.N(a - b, 30))
        return bool(difference <= 1e-12 * max(1, abs(sympy.N(b, 30))))
    except Exception:  # noqa: BLE001 - sympy may refuse an odd comparison: not equal
        return False


def symbolic_equal(answer: str, solution: str) -> bool | None:
    """Whether two arithmetic answers are equal as exact numbers; None if either is unreadable."""
    a, b = arithmetic_value(answer), arithmetic_value(solution)
    if a is None or b is None:
        return None
    return _same_number(a, b)


# A quantity as written in a sentence: 42, -3.5, 1,000, .5, or a fraction 1/2. Digits glued to a
# word ("H2O", "COVID-19") or part of a date ("12/25/2024") are not one.
_DIGITS = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+"
_QUANTITY = rf"-?(?:{_DIGITS})(?:\s*/\s*(?:{_DIGITS}))?"
_QUANTITY_END = r"(?![.,/]?\d)"
_QUANTITY_IN_TEXT = re.compile(rf"(?<![\w.,/])(?<![A-Za-z]-)({_QUANTITY}){_QUANTITY_END}")
_QUANTITY_AFTER_ANSWER = re.compile(
    rf"\b(?i:answer)\b\s*(?:(?i:is)\b)?\s*[:=]?\s*({_QUANTITY}){_QUANTITY_END}"
)
_PLAIN_LATEX_FRACTION = re.compile(r"\\[dt]?frac\{\s*(-?[\d.]+)\s*\}\{\s*(-?[\d.]+)\s*\}")


def stated_number(text: str) -> str | None:
    """The number a sentence gives as its answer: the last one after "answer (is)", else the last.

    The last, like math-verify's extraction in VLM-R1: "3 cats and 42 dogs" states 42, "42 cats
    and 3 dogs" states 3. LaTeX is unwrapped first (the last \\boxed{}, $, \\frac{1}{2} -> 1/2).
    """
    text = _PLAIN_LATEX_FRACTION.sub(r"\1/\2", _LATEX_NOISE.sub("", _last_boxed(text)))
    after_answer = _QUANTITY_AFTER_ANSWER.findall(text)
    if after_answer:
        return after_answer[-1]
    numbers = _QUANTITY_IN_TEXT.findall(text)
    return numbers[-1] if numbers else None


@functools.cache
def _load_math_verify() -> Any | None:
    """The optional math_verify module (extra "math"), or None; looked up once."""
    try:
        import math_verify
    except ImportError:
        return None
    return math_verify


def _math_verify_equal(answer: str, solution: str) -> bool:
    """math_verify's verdict; False when it is absent or fails."""
    math_verify = _load_math_verify()
    if math_verify is None:
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


def _choice_score(answer: str, letter: str, option_text: str) -> float:
    """1.0 iff the answer picks ``letter``, or picks none and repeats the option's text."""
    chosen = multiple_choice_letter(answer)
    if chosen is not None:
        return float(chosen == letter)
    return float(bool(option_text) and normalise_text(answer) == normalise_text(option_text))


def _equals_number(answer: str, value: Any) -> bool:
    """The whole answer, or else the number it states, equals ``value``."""
    whole = arithmetic_value(answer)
    if whole is not None:
        return _same_number(whole, value)
    stated = stated_number(answer)
    number = arithmetic_value(stated) if stated is not None else None
    return number is not None and _same_number(number, value)


def default_score(answer: str, solution: str) -> float:
    """VLM-R1's default and more, as an ordered cascade: the first step that applies decides.

    1. exact: equal after ``normalise_text``: 1.0.
    2. choice: the solution names an option ("B", "(B)", "B. Paris"): 1.0 iff the answer picks
       the same letter (``multiple_choice_letter``), or picks none and repeats the option's text;
       else 0.0, since partial credit between options means nothing.
    3. math: 1.0 if math-verify (when installed) finds them equal. If the solution is a number
       or plain arithmetic ("42", "0.5", "1/2", "\\frac{1}{2}"): 1.0 iff the whole answer, or
       else the number it states (``stated_number``), equals it exactly; else 0.0.
    4. fuzzy: the Levenshtein ratio, partial credit for free text.
    """
    if exact_score(answer, solution) == 1.0:
        return 1.0
    option = solution_option(solution)
    if option is not None:
        return _choice_score(answer, *option)
    if _math_verify_equal(answer, solution):
        return 1.0
    value = arithmetic_value(solution)
    if value is not None:
        return float(_equals_number(answer, value))
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
