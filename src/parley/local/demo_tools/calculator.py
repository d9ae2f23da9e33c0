"""Evaluation of parsed expressions: exact where the arithmetic allows, bounded everywhere.

A value is a `Fraction` while it is exact (every literal, `+ - * / // %`, integer powers, and
roots that come out whole, such as sqrt(9/4) or 8 ** (1/3)). It becomes an approximate `Decimal`
of `PRECISION` significant digits once an irrational enters: pi, e, or a root that is not exact.

Bounds, checked before the work rather than after it: no exact value may have more than
`MAX_DIGITS` digits in its numerator or denominator, a power is refused when its size can be
told in advance to exceed that, and an approximate value may not reach 10**MAX_DIGITS. Together
with the parser's bounds, no expression can make the tool burn CPU or memory.

May import: the standard library and parley.local.demo_tools (errors, expression).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import ROUND_FLOOR, Context, Decimal, DivisionByZero, InvalidOperation, Overflow
from fractions import Fraction
from typing import assert_never

from parley.local.demo_tools.errors import CalculationError
from parley.local.demo_tools.expression import Binary, Call, Constant, Node, Number, Unary, parse

PRECISION = 30
MAX_DIGITS = 1000
MAX_ROOT_DEGREE = 64  # exact roots are tried up to this degree; beyond, the result is approximate

_TOO_LARGE = 10**MAX_DIGITS
_LOG2_TOO_LARGE = MAX_DIGITS * math.log2(10)
# Forty digits, so the constants are exact to the last of PRECISION digits.
_CONSTANTS = {
    "pi": Decimal("3.141592653589793238462643383279502884197"),
    "e": Decimal("2.718281828459045235360287471352662497757"),
}

_ARITY = {
    "sqrt": (1, 1, "one argument"),
    "abs": (1, 1, "one argument"),
    "round": (1, 2, "one or two arguments"),
    "min": (1, math.inf, "at least one argument"),
    "max": (1, math.inf, "at least one argument"),
}

Value = Fraction | Decimal  # Fraction: exact; Decimal: approximate


@dataclass(frozen=True, slots=True, kw_only=True)
class Calculation:
    expression: str
    value: str  # exact ("7", "2.5", "1/3") or approximate ("1.41421356237309504880168872421")
    decimal: str  # the value as a decimal, exact or to PRECISION significant digits
    exact: bool

    def as_text(self) -> str:
        expression = " ".join(self.expression.split())
        if not self.exact:
            return f"{expression} ≈ {self.value}"
        if self.decimal == self.value:
            return f"{expression} = {self.value}"
        return f"{expression} = {self.value} ≈ {self.decimal}"


def calculate(expression: str) -> Calculation:
    """Parse and evaluate `expression`; a `CalculationError` says what went wrong and where."""
    value = evaluate(parse(expression))
    if isinstance(value, Decimal):
        text = _decimal_text(value)
        return Calculation(expression=expression, value=text, decimal=text, exact=False)
    return Calculation(expression=expression, value=_fraction_text(value), decimal=_decimal_of(value), exact=True)


def evaluate(node: Node) -> Value:
    match node:
        case Number(value=value):
            return value
        case Constant(name=name):
            return _CONSTANTS[name]
        case Unary(operator=operator, operand=operand):
            inner = evaluate(operand)
            return -inner if operator == "-" else inner
        case Binary(operator=operator, left=left, right=right, position=position):
            return _binary(operator, evaluate(left), evaluate(right), position)
        case Call(function=function, arguments=arguments, position=position):
            return _call(function, [evaluate(argument) for argument in arguments], position)
        case _:
            assert_never(node)


def _context() -> Context:
    # Overflow, invalid operations and division by zero raise, so no infinity or NaN ever
    # reaches a result; underflow quietly gives zero, which is the right approximation.
    return Context(
        prec=PRECISION, Emax=MAX_DIGITS - 1, Emin=-MAX_DIGITS, traps=[InvalidOperation, DivisionByZero, Overflow]
    )


@contextmanager
def _approximate(position: int) -> Iterator[Context]:
    """A decimal context whose signals become errors that say where they happened."""
    try:
        yield _context()
    except Overflow:
        raise CalculationError(f"result too large (more than {MAX_DIGITS} digits)", position) from None
    except DivisionByZero:
        raise CalculationError("division by zero", position) from None
    except InvalidOperation:
        raise CalculationError("result is undefined", position) from None


def _checked(value: Fraction, position: int) -> Fraction:
    if abs(value.numerator) >= _TOO_LARGE or value.denominator >= _TOO_LARGE:
        raise CalculationError(f"result too large (more than {MAX_DIGITS} digits)", position)
    return value


def _to_decimal(value: Value, position: int) -> Decimal:
    if isinstance(value, Decimal):
        return value
    with _approximate(position) as context:
        return context.divide(Decimal(value.numerator), Decimal(value.denominator))


def _binary(operator: str, left: Value, right: Value, position: int) -> Value:
    if operator in ("/", "//", "%") and right == 0:
        raise CalculationError("division by zero", position)
    if operator == "**":
        return _power(left, right, position)
    if isinstance(left, Fraction) and isinstance(right, Fraction):
        return _checked(_exact_binary(operator, left, right), position)
    a, b = _to_decimal(left, position), _to_decimal(right, position)
    with _approximate(position) as context:
        if operator in ("//", "%"):
            # Floor division and a remainder with the divisor's sign, as Python does for numbers.
            quotient = context.divide(a, b).to_integral_value(rounding=ROUND_FLOOR, context=context)
            return quotient if operator == "//" else context.subtract(a, context.multiply(b, quotient))
        operation: dict[str, Callable[[Decimal, Decimal], Decimal]]
        operation = {"+": context.add, "-": context.subtract, "*": context.multiply, "/": context.divide}
        return operation[operator](a, b)


def _exact_binary(operator: str, left: Fraction, right: Fraction) -> Fraction:
    match operator:
        case "+":
            return left + right
        case "-":
            return left - right
        case "*":
            return left * right
        case "/":
            return left / right
        case "//":
            return Fraction(left // right)
        case _:
            return left % right


def _power(base: Value, exponent: Value, position: int) -> Value:
    if exponent == 0:
        return Fraction(1)  # x ** 0 is 1 for every x, 0 included, as in Python
    if base == 0 and exponent < 0:
        raise CalculationError("division by zero (zero to a negative power)", position)
    if base < 0 and not (isinstance(exponent, Fraction) and exponent.denominator == 1):
        raise CalculationError("a negative number to a fractional power has no real value", position)
    if isinstance(base, Fraction) and isinstance(exponent, Fraction):
        if exponent.denominator == 1:
            return _integer_power(base, exponent.numerator, position)
        root = _exact_root(base, exponent.denominator)
        if root is not None:
            return _integer_power(root, exponent.numerator, position)
    a, b = _to_decimal(base, position), _to_decimal(exponent, position)
    with _approximate(position) as context:
        return context.power(a, b)


def _integer_power(base: Fraction, exponent: int, position: int) -> Fraction:
    if base in (0, 1) or exponent == 0:
        return base**exponent
    if base == -1:
        return Fraction(1 if exponent % 2 == 0 else -1)
    # The size of the result is known before computing it: refuse what would exceed the bound.
    # Here the larger of numerator and denominator is at least 2, so each unit of the exponent
    # adds at least one bit; the first test also keeps a huge exponent away from float.
    largest = max(abs(base.numerator), base.denominator)
    if abs(exponent) >= _LOG2_TOO_LARGE or abs(exponent) * math.log2(largest) >= _LOG2_TOO_LARGE:
        raise CalculationError(f"result too large (more than {MAX_DIGITS} digits)", position)
    return _checked(base**exponent, position)


def _exact_root(value: Fraction, degree: int) -> Fraction | None:
    """The exact `degree`-th root of a non-negative `value`, or None when it is irrational."""
    if degree > MAX_ROOT_DEGREE:
        return None
    numerator, denominator = _integer_root(value.numerator, degree), _integer_root(value.denominator, degree)
    if numerator**degree == value.numerator and denominator**degree == value.denominator:
        return Fraction(numerator, denominator)
    return None


def _integer_root(n: int, degree: int) -> int:
    """The largest integer whose `degree`-th power is at most `n` (Newton's method on integers)."""
    if n < 2:
        return n
    guess = 1 << -(-n.bit_length() // degree)  # a power of two at least the root
    while True:
        better = ((degree - 1) * guess + n // guess ** (degree - 1)) // degree
        if better >= guess:
            return guess
        guess = better


def _call(function: str, arguments: list[Value], position: int) -> Value:
    low, high, wanted = _ARITY[function]
    if not low <= len(arguments) <= high:
        raise CalculationError(f"{function} takes {wanted}, not {len(arguments)}", position)
    if function == "abs":
        return -arguments[0] if arguments[0] < 0 else arguments[0]
    if function == "min":
        return min(arguments, key=_exactly)
    if function == "max":
        return max(arguments, key=_exactly)
    if function == "round":
        return _round(arguments, position)
    return _sqrt(arguments[0], position)


def _exactly(value: Value) -> Fraction:
    return value if isinstance(value, Fraction) else Fraction(value)


def _sqrt(value: Value, position: int) -> Value:
    if value < 0:
        raise CalculationError("square root of a negative number", position)
    if isinstance(value, Fraction):
        root = _exact_root(value, 2)
        if root is not None:
            return root
    approximate = _to_decimal(value, position)
    with _approximate(position) as context:
        return context.sqrt(approximate)


def _round(arguments: list[Value], position: int) -> Fraction:
    """Round half away from zero, as taught at school, to a whole number of decimal places."""
    places = arguments[1] if len(arguments) == 2 else Fraction(0)
    if not (isinstance(places, Fraction) and places.denominator == 1 and abs(places) <= MAX_DIGITS):
        raise CalculationError(f"round's places must be a whole number from -{MAX_DIGITS} to {MAX_DIGITS}", position)
    value = _exactly(arguments[0])
    scale = Fraction(10) ** int(places)
    rounded = math.floor(abs(value) * scale + Fraction(1, 2))
    return _checked(Fraction(rounded if value >= 0 else -rounded) / scale, position)


def _fraction_text(value: Fraction) -> str:
    if value.denominator == 1:
        return str(value.numerator)
    return _finite_decimal(value) or f"{value.numerator}/{value.denominator}"


def _finite_decimal(value: Fraction) -> str | None:
    """`value` written out exactly in decimal, or None when its expansion never ends."""
    denominator, twos, fives = value.denominator, 0, 0
    while denominator % 2 == 0:
        denominator, twos = denominator // 2, twos + 1
    while denominator % 5 == 0:
        denominator, fives = denominator // 5, fives + 1
    if denominator != 1:
        return None
    places = max(twos, fives)
    digits = str(abs(value.numerator) * 10**places // value.denominator).rjust(places + 1, "0")
    sign = "-" if value < 0 else ""
    return f"{sign}{digits[:-places]}.{digits[-places:]}"


def _decimal_of(value: Fraction) -> str:
    if value.denominator == 1:
        return str(value.numerator)
    return _finite_decimal(value) or _decimal_text(_to_decimal(value, 0))


def _decimal_text(value: Decimal) -> str:
    value = value.normalize(_context())
    if value == 0:
        return "0"
    if -7 < value.adjusted() < PRECISION:
        return format(value, "f")
    return format(value, "e")
