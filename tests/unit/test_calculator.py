"""The demo calculator alone: parsing, evaluation, every error with its position, the bounds."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from parley.local.demo_tools.calculator import MAX_DIGITS, calculate
from parley.local.demo_tools.errors import CalculationError
from parley.local.demo_tools.expression import MAX_DEPTH, MAX_LENGTH, Binary, Number, Unary, parse


def value_of(expression: str) -> str:
    return calculate(expression).value


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("2 + 3 * 4", "14"),
        ("(2 + 3) * 4", "20"),
        ("2 * 3 ** 2", "18"),
        ("1 + 6 / 4", "2.5"),
        ("7 - 3 % 2", "6"),
        ("10 - 7 // 2", "7"),
        ("2 ** 3 ** 2", "512"),  # power is right-associative
        ("(2 ** 3) ** 2", "64"),
        ("8 - 3 - 2", "3"),  # the others are left-associative
        ("64 / 4 / 2", "8"),
        ("100 // 7 // 2", "7"),
        ("-2 ** 2", "-4"),  # unary minus binds looser than **, as in Python
        ("(-2) ** 2", "4"),
        ("2 ** -1", "0.5"),
        ("2 ** -1 * 4", "2"),
        ("2 * -3", "-6"),
        ("--3", "3"),
        ("+-+1", "-1"),
        ("-7 // 2", "-4"),  # floor division and a remainder with the divisor's sign
        ("-7 % 3", "2"),
        ("7 % -3", "-2"),
        ("7.5 % 2", "1.5"),
        (".5 + 1.", "1.5"),
        ("0.1 + 0.2", "0.3"),  # exact, not 0.30000000000000004
        ("1 / 3", "1/3"),
        ("0 ** 0", "1"),
        ("  12  ", "12"),
    ],
)
def test_operators_precedence_and_associativity(expression: str, expected: str) -> None:
    assert value_of(expression) == expected


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("sqrt(9/4)", "1.5"),
        ("sqrt(16) + abs(-3)", "7"),
        ("abs(2 - 5.5)", "3.5"),
        ("round(2.5)", "3"),  # half away from zero, as taught at school
        ("round(-2.5)", "-3"),
        ("round(2.345, 2)", "2.35"),
        ("round(1234, -2)", "1200"),
        ("round(pi, 4)", "3.1416"),
        ("min(3, 1/2, 7)", "0.5"),
        ("max(-1, -2)", "-1"),
        ("min(4)", "4"),
        ("8 ** (1/3)", "2"),  # exact roots stay exact
        ("4 ** 0.5", "2"),
        ("(1/4) ** -0.5", "2"),
    ],
)
def test_functions_and_exact_roots(expression: str, expected: str) -> None:
    result = calculate(expression)
    assert result.exact
    assert result.value == expected


@pytest.mark.parametrize(
    ("expression", "starts_with"),
    [
        ("pi", "3.14159265358979323846264338"),
        ("e", "2.71828182845904523536028747"),
        ("sqrt(2)", "1.41421356237309504880168872"),
        ("2 ** 0.5", "1.41421356237309504880168872"),
        ("max(e, pi)", "3.14159265358979"),
        ("e ** 1000", "1.970071114017046993888879352"),
    ],
)
def test_irrational_results_are_marked_approximate(expression: str, starts_with: str) -> None:
    result = calculate(expression)
    assert not result.exact
    assert result.value.startswith(starts_with)
    assert result.as_text() == f"{expression} ≈ {result.value}"


def test_the_text_shows_the_expression_and_the_value() -> None:
    assert calculate("2 + 3 * 4").as_text() == "2 + 3 * 4 = 14"
    third = calculate("1/3")
    assert (third.value, third.decimal) == ("1/3", "0.333333333333333333333333333333")
    assert third.as_text() == "1/3 = 1/3 ≈ 0.333333333333333333333333333333"
    assert calculate("1 +\n 1").as_text() == "1 + 1 = 2"


def test_the_tree_keeps_shape_and_positions() -> None:
    tree = parse("1 - 2 - -3")
    assert tree == Binary(
        operator="-",
        left=Binary(
            operator="-",
            left=Number(value=Fraction(1), position=1),
            right=Number(value=Fraction(2), position=5),
            position=3,
        ),
        right=Unary(operator="-", operand=Number(value=Fraction(3), position=10), position=9),
        position=7,
    )


@pytest.mark.parametrize(
    ("expression", "what", "position"),
    [
        ("1 + )", "unexpected ')'", 5),
        ("(1 + 2))", "unexpected ')'", 8),
        ("(1 + 2", "missing ')' for the '('", 1),
        ("max(1, (2", "missing ')' for the '('", 8),
        ("1 +", "unexpected end of expression", 4),
        ("1 2", "unexpected '2'", 3),
        ("2 ** ** 3", "unexpected '**'", 6),
        ("()", "unexpected ')'", 2),
        ("max(1,)", "unexpected ')'", 7),
        ("pi(2)", "unexpected '('", 3),
        ("2 $ 3", "unexpected character '$'", 3),
        ("2 ^ 3", "unexpected character '^' (use ** for powers)", 3),
        ("\u0663 + 1", "unexpected character '\u0663'", 1),  # only ASCII digits are numbers
        ("1 + foo(2)", "unknown name 'foo' (functions: sqrt, abs, round, min, max; constants: pi, e)", 5),
        ("sqrt + 1", "sqrt is a function: write sqrt(...)", 1),
        ("5 / (2 - 2)", "division by zero", 3),
        ("5 // 0", "division by zero", 3),
        ("5 % 0", "division by zero", 3),
        ("1 / (pi - pi)", "division by zero", 3),
        ("0 ** -1", "division by zero (zero to a negative power)", 3),
        ("(-8) ** (1/3)", "a negative number to a fractional power has no real value", 6),
        ("1 + sqrt(-4)", "square root of a negative number", 5),
        ("sqrt(1, 2)", "sqrt takes one argument, not 2", 1),
        ("abs()", "abs takes one argument, not 0", 1),
        ("round(1, 2, 3)", "round takes one or two arguments, not 3", 1),
        ("max()", "max takes at least one argument, not 0", 1),
        ("round(1, 0.5)", "round's places must be a whole number from -1000 to 1000", 1),
        ("round(1, 1001)", "round's places must be a whole number from -1000 to 1000", 1),
    ],
)
def test_errors_say_what_and_where(expression: str, what: str, position: int) -> None:
    with pytest.raises(CalculationError) as caught:
        calculate(expression)
    assert (caught.value.what, caught.value.position) == (what, position)
    assert caught.value.message == f"{what} at position {position}"


@pytest.mark.parametrize("expression", ["", "   ", "\n"])
def test_an_empty_expression_is_an_error(expression: str) -> None:
    with pytest.raises(CalculationError, match=r"^empty expression$"):
        calculate(expression)


def test_the_length_bound() -> None:
    longest = "1+" * (MAX_LENGTH // 2 - 1) + "10"
    assert len(longest) == MAX_LENGTH
    assert value_of(longest) == str(MAX_LENGTH // 2 - 1 + 10)
    with pytest.raises(CalculationError, match=f"^expression is {MAX_LENGTH + 1} characters long; the limit is 500$"):
        calculate(longest + "0")


@pytest.mark.parametrize(
    "nest",
    [
        lambda depth: "(" * depth + "1" + ")" * depth,
        lambda depth: "-" * depth + "1",
        lambda depth: "abs(" * depth + "1" + ")" * depth,
        lambda depth: "1" + "**1" * depth,
    ],
    ids=["parentheses", "unary signs", "calls", "power chain"],
)
def test_the_nesting_bound(nest: Callable[[int], str]) -> None:
    assert value_of(nest(MAX_DEPTH)) in ("1", "-1")
    with pytest.raises(CalculationError, match=f"^expression nested more than {MAX_DEPTH} levels deep at position"):
        calculate(nest(MAX_DEPTH + 1))


def test_the_digits_bound() -> None:
    assert value_of("10 ** 999") == "1" + "0" * 999
    assert len(value_of("2 ** 3000")) == 904
    assert value_of("(-1) ** (10 ** 999)") == "1"  # a power of -1, 0 or 1 is never large
    too_large = f"result too large (more than {MAX_DIGITS} digits)"
    for expression, position in [
        ("10 ** 1000", 4),
        ("(10 ** 999) * 10", 13),
        ("1 / 10 ** 999 / 10", 15),
        ("(1/3) ** 2100", 7),
        ("e ** 2400", 3),
        ("pi * 10 ** 999 * 10", 16),
    ]:
        with pytest.raises(CalculationError) as caught:
            calculate(expression)
        assert (caught.value.what, caught.value.position) == (too_large, position), expression


@pytest.mark.timeout(5)
def test_huge_powers_are_refused_before_any_work() -> None:
    # Computed, these would take hours and gigabytes; the size is known from the operands first.
    for expression in ["9 ** 9 ** 9 ** 9", "2 ** (10 ** 999)", "(2/3) ** (10 ** 100)", "pi ** (10 ** 999)"]:
        with pytest.raises(CalculationError, match="result too large"):
            calculate(expression)


# A property: random well-formed expressions of small integers, + - * and parentheses evaluate
# to the value of the same tree folded here, with Python integers and no parser at all.


@dataclass(frozen=True)
class Leaf:
    value: int


@dataclass(frozen=True)
class Operation:
    operator: str
    left: Leaf | Operation
    right: Leaf | Operation


Tree = Leaf | Operation
_PRECEDENCE = {"+": 1, "-": 1, "*": 2}


def fold(tree: Tree) -> int:
    if isinstance(tree, Leaf):
        return tree.value
    left, right = fold(tree.left), fold(tree.right)
    return left + right if tree.operator == "+" else left - right if tree.operator == "-" else left * right


def trees() -> st.SearchStrategy[Tree]:
    leaves = st.builds(Leaf, st.integers(min_value=-20, max_value=20))
    return st.recursive(
        leaves,
        lambda children: st.builds(Operation, st.sampled_from(["+", "-", "*"]), children, children),
        max_leaves=25,
    )


@st.composite
def written(draw: st.DrawFn, tree: Tree) -> str:
    """`tree` as text: parentheses where precedence needs them, and sometimes where it does not."""
    if isinstance(tree, Leaf):
        return str(tree.value)
    spaced = draw(st.booleans())

    def side(child: Tree, needs: bool) -> str:
        text = draw(written(child))
        return f"({text})" if needs or draw(st.booleans()) else text

    precedence = _PRECEDENCE[tree.operator]
    left = side(tree.left, isinstance(tree.left, Operation) and _PRECEDENCE[tree.left.operator] < precedence)
    right = side(tree.right, isinstance(tree.right, Operation) and _PRECEDENCE[tree.right.operator] <= precedence)
    return f"{left} {tree.operator} {right}" if spaced else f"{left}{tree.operator}{right}"


@given(st.data())
def test_random_expressions_match_the_folded_tree(data: st.DataObject) -> None:
    tree = data.draw(trees())
    text = data.draw(written(tree))
    result = calculate(text)
    assert result.exact
    assert result.value == str(fold(tree)), text
