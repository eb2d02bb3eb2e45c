"""The Argo expressions our workflows use: `{{...}}` substitution, `when` and `depends`.

- Substitution: `{{inputs.parameters.x}}`, `{{tasks.t.outputs.parameters.y}}`,
  `{{workflow.parameters.z}}`, `{{workflow.name}}`... looked up in a flat scope. An unknown
  variable or an `{{=expr}}` expression is an error, as it is for Argo's validator.
- `when`: Argo evaluates it with govaluate after substitution, turning bare words into
  strings (so `cpu-python != trtllm-engine` must be quoted, a bare `a-b` is arithmetic).
  Supported: `== != < > <= >= =~ !~ && || !`, parentheses, quoted strings, numbers,
  `true`/`false`, bare words; anything else is an UnsupportedFeature.
- `depends`: task results `.Succeeded .Failed .Errored .Skipped .Omitted .Daemoned` joined
  with `&& || !`; a bare name means `(t.Succeeded || t.Skipped || t.Daemoned)`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from workflows.local.errors import LocalRunError, UnsupportedFeature

VARIABLE = re.compile(r"\{\{\s*(.*?)\s*\}\}")

# Node phases, named as the Argo UI shows them.
SUCCEEDED, FAILED, ERROR, SKIPPED, OMITTED = "Succeeded", "Failed", "Error", "Skipped", "Omitted"
PENDING, RUNNING = "Pending", "Running"
DONE_PHASES = frozenset({SUCCEEDED, FAILED, ERROR, SKIPPED, OMITTED})

# `depends` result name -> node phase it tests.
DEPENDS_RESULTS = {
    "Succeeded": SUCCEEDED,
    "Failed": FAILED,
    "Errored": ERROR,
    "Skipped": SKIPPED,
    "Omitted": OMITTED,
    "Daemoned": "Daemoned",  # daemons are refused earlier; the name stays valid syntax
}


def variables_in(text: str) -> list[str]:
    """The variable names referenced by `{{...}}` in text."""
    return [match.group(1) for match in VARIABLE.finditer(text)]


def substitute(text: str, scope: Mapping[str, str], where: str) -> str:
    """Replace every `{{name}}` in text from scope; unknown names are an error naming `where`."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name.startswith("="):
            raise UnsupportedFeature(
                [f"{where}: expression {{{{{name}}}}} (expr-lang `{{{{=...}}}}`) is not supported locally"]
            )
        if name not in scope:
            known = ", ".join(sorted(k for k in scope if not k.startswith("_")))
            raise LocalRunError(f"{where}: cannot resolve {{{{{name}}}}}; known here: {known or 'nothing'}")
        return scope[name]

    return VARIABLE.sub(replace, text)


def substitute_tree(value: object, scope: Mapping[str, str], where: str) -> object:
    """`substitute` applied to every string inside nested dicts and lists."""
    if isinstance(value, str):
        return substitute(value, scope, where)
    if isinstance(value, list):
        return [substitute_tree(item, scope, where) for item in value]
    if isinstance(value, dict):
        return {key: substitute_tree(item, scope, where) for key, item in value.items()}
    return value


# --- `when` ---------------------------------------------------------------------------------------

WHEN_TOKEN = re.compile(
    r"""\s*(?:
        (?P<string>'[^']*'|"[^"]*")
      | (?P<number>\d+(?:\.\d+)?(?![\w.]))
      | (?P<op>==|!=|>=|<=|=~|!~|&&|\|\||[<>!()])
      | (?P<word>[A-Za-z_][\w.]*)
      | (?P<other>\S)
    )""",
    re.VERBOSE,
)


@dataclass(frozen=True)
class Token:
    kind: str
    text: str


def _when_tokens(expression: str, where: str) -> list[Token]:
    tokens = []
    for match in WHEN_TOKEN.finditer(expression):
        kind = match.lastgroup
        text = match.group(kind) if kind else ""
        if kind == "other":
            hint = " (quote values containing '-', e.g. 'cpu-python')" if text == "-" else ""
            raise UnsupportedFeature(
                [f"{where}: `when: {expression}`: operator {text!r} is not supported locally{hint}"]
            )
        if kind:
            tokens.append(Token(kind, text))
    return tokens


class _WhenParser:
    """Recursive descent over: or := and ('||' and)*; and := not ('&&' not)*; not := '!' not | cmp."""

    def __init__(self, expression: str, where: str):
        self.expression, self.where = expression, where
        self.tokens = _when_tokens(expression, where)
        self.pos = 0

    def fail(self, what: str) -> LocalRunError:
        return LocalRunError(f"{self.where}: `when: {self.expression}`: {what}")

    def peek(self) -> Token | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> Token:
        token = self.peek()
        if token is None:
            raise self.fail("unexpected end of expression")
        self.pos += 1
        return token

    def parse(self) -> bool:
        value = self.disjunction()
        if self.peek() is not None:
            raise self.fail(f"unexpected {self.peek().text!r}")
        if not isinstance(value, bool):
            raise self.fail(f"evaluates to {value!r}, not true/false")
        return value

    def disjunction(self) -> object:
        return self.chain("||", self.conjunction, lambda a, b: a or b)

    def conjunction(self) -> object:
        return self.chain("&&", self.negation, lambda a, b: a and b)

    def chain(
        self, operator: str, operand: Callable[[], object], combine: Callable[[bool, bool], bool]
    ) -> object:
        """operand (operator operand)*, both sides evaluated (govaluate does not short-circuit errors)."""
        value = operand()
        while (token := self.peek()) is not None and token.text == operator:
            self.take()
            right = operand()
            value = combine(self.boolean(value), self.boolean(right))
        return value

    def negation(self) -> object:
        token = self.peek()
        if token is not None and token.text == "!":
            self.take()
            return not self.boolean(self.negation())
        return self.comparison()

    def comparison(self) -> object:
        left = self.primary()
        token = self.peek()
        if token is None or token.text not in COMPARATORS:
            return left
        self.take()
        right = self.primary()
        return COMPARATORS[token.text](self, left, right)

    def primary(self) -> object:
        token = self.take()
        if token.text == "(":
            value = self.disjunction()
            if self.take().text != ")":
                raise self.fail("missing ')'")
            return value
        if token.kind == "string":
            return token.text[1:-1]
        if token.kind == "number":
            return float(token.text)
        if token.kind == "word":
            # Argo turns govaluate variables into strings: `foo == bar` compares two words.
            return {"true": True, "false": False}.get(token.text, token.text)
        raise self.fail(f"unexpected {token.text!r}")

    def boolean(self, value: object) -> bool:
        if not isinstance(value, bool):
            raise self.fail(f"{value!r} is not true/false")
        return value

    def ordered(self, left: object, right: object, compare: Callable[[float, float], bool]) -> bool:
        if not isinstance(left, float) or not isinstance(right, float):
            raise self.fail(f"cannot order {left!r} and {right!r}: both must be numbers")
        return compare(left, right)


COMPARATORS: dict[str, Callable[[_WhenParser, object, object], bool]] = {
    "==": lambda p, a, b: a == b,
    "!=": lambda p, a, b: a != b,
    "<": lambda p, a, b: p.ordered(a, b, lambda x, y: x < y),
    ">": lambda p, a, b: p.ordered(a, b, lambda x, y: x > y),
    "<=": lambda p, a, b: p.ordered(a, b, lambda x, y: x <= y),
    ">=": lambda p, a, b: p.ordered(a, b, lambda x, y: x >= y),
    "=~": lambda p, a, b: re.search(str(b), str(a)) is not None,
    "!~": lambda p, a, b: re.search(str(b), str(a)) is None,
}


def evaluate_when(expression: str, where: str) -> bool:
    """Evaluate an already-substituted `when` expression the way Argo (govaluate) does."""
    return _WhenParser(expression, where).parse()


def check_when_syntax(expression: str, where: str) -> None:
    """Refuse unsupported operators in a `when` before anything runs (variables not yet known)."""
    _when_tokens(VARIABLE.sub("x", expression), where)


# --- `depends` ------------------------------------------------------------------------------------

DEPENDS_TOKEN = re.compile(r"\s*(?:(?P<op>&&|\|\||[!()])|(?P<ref>[A-Za-z0-9][-\w]*(?:\.\w+)?)|(?P<other>\S))")


@dataclass(frozen=True)
class Depends:
    """A parsed `depends` expression: the tasks it waits for and how to decide it."""

    expression: str
    tokens: tuple[Token, ...]

    @property
    def tasks(self) -> list[str]:
        """Names of the tasks referenced, in order of first use."""
        names: list[str] = []
        for token in self.tokens:
            name = token.text.split(".")[0]
            if token.kind == "ref" and name not in names:
                names.append(name)
        return names

    def evaluate(self, phase_of: Callable[[str], str], continues: Callable[[str, str], bool]) -> bool:
        """True when the dependencies allow the task to run.

        phase_of(task) gives a finished task's phase; continues(task, phase) says whether its
        `continueOn` lets a failure count as done for a bare dependency.
        """
        terms = []
        for token in self.tokens:
            if token.kind != "ref":
                terms.append({"&&": " and ", "||": " or ", "!": " not "}.get(token.text, token.text))
                continue
            name, _, result = token.text.partition(".")
            phase = phase_of(name)
            if result:
                met = phase == DEPENDS_RESULTS[result]
            else:
                met = phase in (SUCCEEDED, SKIPPED) or continues(name, phase)
            terms.append(str(met))
        # Only True/False/and/or/not/parentheses remain, all produced above.
        return bool(eval("".join(terms), {"__builtins__": {}}))


def parse_depends(expression: str, where: str) -> Depends:
    """Parse a `depends` expression, refusing unknown results (e.g. `.AnySucceeded` needs loops)."""
    tokens = []
    for match in DEPENDS_TOKEN.finditer(expression):
        kind = match.lastgroup
        text = match.group(kind) if kind else ""
        if kind == "other":
            raise LocalRunError(f"{where}: `depends: {expression}`: unexpected {text!r}")
        if kind == "ref" and "." in text:
            result = text.split(".", 1)[1]
            if result not in DEPENDS_RESULTS:
                raise UnsupportedFeature(
                    [
                        f"{where}: `depends: {expression}`: result .{result} is not supported locally "
                        f"(valid: {', '.join('.' + r for r in DEPENDS_RESULTS)})"
                    ]
                )
        if kind:
            tokens.append(Token(kind, text))
    depends = Depends(expression, tuple(tokens))
    try:  # syntax check with every reference true
        depends.evaluate(lambda _: SUCCEEDED, lambda *_: False)
    except SyntaxError:
        raise LocalRunError(f"{where}: `depends: {expression}` is not a valid expression") from None
    return depends


def depends_of(task: Mapping[str, object], where: str) -> Depends:
    """The task's `depends`, or its `dependencies` list as the equivalent `a && b`, or nothing."""
    if "depends" in task and "dependencies" in task:
        raise LocalRunError(f"{where}: use either `depends` or `dependencies`, not both")
    if "depends" in task:
        return parse_depends(str(task["depends"]), where)
    names = task.get("dependencies") or []
    return parse_depends(" && ".join(str(n) for n in names), where) if names else Depends("", ())
