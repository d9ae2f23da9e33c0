"""Arithmetic expressions: a tokenizer and a Pratt parser that build a small syntax tree.

Grammar, loosest binding first (as in Python):

    + -            binary, left-associative
    * / // %       binary, left-associative
    + -            unary
    **             binary, right-associative; its right side may be unary (2 ** -1)
    atoms          numbers (12, 3.5, .5), constants (pi, e), calls f(a, b), ( ... )

So `-2 ** 2` is -4 and `2 ** 3 ** 2` is 512. Positions count characters from 1 and are carried
by every node, so evaluation errors can say where they happened.

Bounds, so a hostile expression cannot exhaust the stack or the CPU: at most `MAX_LENGTH`
characters, and at most `MAX_DEPTH` levels of nesting, where a level is a parenthesis, a call, a
unary sign or the right side of `**` (the only constructs whose nesting the text can repeat).

May import: the standard library and parley.local.demo_tools.errors.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction

from parley.local.demo_tools.errors import CalculationError

MAX_LENGTH = 500
MAX_DEPTH = 50
FUNCTIONS = ("sqrt", "abs", "round", "min", "max")
CONSTANTS = ("pi", "e")

_TOKEN = re.compile(
    r"(?P<space>\s+)|(?P<number>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)|(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<op>\*\*|//|[-+*/%(),])"
)
_ADDITIVE = 10
_MULTIPLICATIVE = 20
_UNARY = 25
_POWER = 30
_BINARY_POWER = {"+": _ADDITIVE, "-": _ADDITIVE, "*": _MULTIPLICATIVE, "/": _MULTIPLICATIVE}
_BINARY_POWER |= {"//": _MULTIPLICATIVE, "%": _MULTIPLICATIVE, "**": _POWER}


@dataclass(frozen=True, slots=True)
class Token:
    kind: str  # "number", "name", "op" or "end"
    text: str
    position: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Number:
    value: Fraction
    position: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Constant:
    name: str
    position: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Unary:
    operator: str
    operand: Node
    position: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Binary:
    operator: str
    left: Node
    right: Node
    position: int  # the operator's


@dataclass(frozen=True, slots=True, kw_only=True)
class Call:
    function: str
    arguments: tuple[Node, ...]
    position: int


Node = Number | Constant | Unary | Binary | Call


def tokenize(text: str) -> list[Token]:
    """The tokens of `text`, ending with an "end" token one past its last character."""
    tokens: list[Token] = []
    index = 0
    while index < len(text):
        match = _TOKEN.match(text, index)
        if match is None:
            character = text[index]
            hint = " (use ** for powers)" if character == "^" else ""
            raise CalculationError(f"unexpected character {character!r}{hint}", index + 1)
        kind = match.lastgroup
        assert kind is not None  # every alternative of the pattern is a named group
        if kind != "space":
            tokens.append(Token(kind, match.group(), index + 1))
        index = match.end()
    tokens.append(Token("end", "", len(text) + 1))
    return tokens


def parse(text: str) -> Node:
    """The syntax tree of `text`, or a `CalculationError` saying what is wrong and where."""
    if len(text) > MAX_LENGTH:
        raise CalculationError(f"expression is {len(text)} characters long; the limit is {MAX_LENGTH}")
    if not text.strip():
        raise CalculationError("empty expression")
    return _Parser(tokenize(text)).parse_all()


def _unexpected(token: Token) -> CalculationError:
    if token.kind == "end":
        return CalculationError("unexpected end of expression", token.position)
    return CalculationError(f"unexpected {token.text!r}", token.position)


class _Parser:
    def __init__(self, tokens: list[Token]) -> None:
        self._tokens = tokens
        self._index = 0
        self._depth = 0

    def parse_all(self) -> Node:
        node = self._expression(0)
        if self._peek().kind != "end":
            raise _unexpected(self._peek())
        return node

    def _peek(self) -> Token:
        return self._tokens[self._index]

    def _advance(self) -> Token:
        token = self._tokens[self._index]
        if token.kind != "end":
            self._index += 1
        return token

    @contextmanager
    def _nested(self, position: int) -> Iterator[None]:
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise CalculationError(f"expression nested more than {MAX_DEPTH} levels deep", position)
        try:
            yield
        finally:
            self._depth -= 1

    def _expression(self, min_binding: int) -> Node:
        left = self._prefix()
        while True:
            token = self._peek()
            binding = _BINARY_POWER.get(token.text) if token.kind == "op" else None
            if binding is None or binding <= min_binding:
                return left
            self._advance()
            if token.text == "**":
                # Right-associative: the right side binds one step looser, so it takes the next
                # `**` too; a unary sign there is parsed by _prefix.
                with self._nested(token.position):
                    right = self._expression(binding - 1)
            else:
                right = self._expression(binding)
            left = Binary(operator=token.text, left=left, right=right, position=token.position)

    def _prefix(self) -> Node:
        token = self._advance()
        if token.kind == "number":
            return Number(value=Fraction(token.text), position=token.position)
        if token.kind == "name":
            return self._name(token)
        if token.text in ("-", "+"):
            with self._nested(token.position):
                operand = self._expression(_UNARY)
            return Unary(operator=token.text, operand=operand, position=token.position)
        if token.text == "(":
            with self._nested(token.position):
                inner = self._expression(0)
            self._expect_closing(token)
            return inner
        raise _unexpected(token)

    def _name(self, token: Token) -> Node:
        if token.text in CONSTANTS:
            return Constant(name=token.text, position=token.position)
        if token.text not in FUNCTIONS:
            known = f"functions: {', '.join(FUNCTIONS)}; constants: {', '.join(CONSTANTS)}"
            raise CalculationError(f"unknown name {token.text!r} ({known})", token.position)
        if self._peek().text != "(":
            raise CalculationError(f"{token.text} is a function: write {token.text}(...)", token.position)
        opening = self._advance()
        arguments: list[Node] = []
        with self._nested(token.position):
            if self._peek().text != ")":
                arguments.append(self._expression(0))
                while self._peek().text == ",":
                    self._advance()
                    arguments.append(self._expression(0))
        self._expect_closing(opening)
        return Call(function=token.text, arguments=tuple(arguments), position=token.position)

    def _expect_closing(self, opening: Token) -> None:
        token = self._peek()
        if token.text == ")":
            self._advance()
        elif token.kind == "end":
            raise CalculationError("missing ')' for the '('", opening.position)
        else:
            raise _unexpected(token)
