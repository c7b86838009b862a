"""No SQL assembled from strings in the package or the DAGs.

Review texts come from shop customers; a single f-string in a query would make
them executable. Every ``.py`` file of ``moderation/`` and ``dags/`` is parsed
(ast, not grep: comments and docstrings cannot hide or fake a hit) and each
call that sends SQL -- ``text(...)``, ``.execute(...)``, ``.executemany(...)``,
``.exec_driver_sql(...)``, ``.executescript(...)`` -- is checked: its statement
must not be an f-string with placeholders, ``%`` formatting, ``+``
concatenation or ``.format(...)``, directly or through a local variable.

Identifier-only SQL built from module constants is allowed only where
:data:`ALLOWED` names the file, the function and the exact expressions it may
interpolate; a new interpolation there still fails.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCANNED = ("moderation", "dags", "benchmarks", "scripts")
SQL_METHODS = {"execute", "executemany", "exec_driver_sql", "executescript"}
STATEMENT_KEYWORDS = {"statement", "sql", "query", "operation", "text"}


@dataclass(frozen=True)
class Allowed:
    """Identifier-only SQL that cannot use bound parameters (table names, column lists)."""

    path: str
    function: str
    expressions: frozenset[str]
    reason: str


ALLOWED = [
    Allowed(
        path="moderation/db.py",
        function="copy_upsert",
        expressions=frozenset({"stage", "target", "columns", "updates", "quote(key)"}),
        reason="COPY staging on PostgreSQL: the temp table, table and column names come from the Table's metadata "
               "(unknown names refused), quoted by the dialect; the data itself goes through COPY rows",
    ),
    Allowed(
        path="benchmarks/bench.py",
        function="scratch_database",
        expressions=frozenset({"name"}),
        reason="CREATE/DROP DATABASE take no bind parameters; the name is generated from a UUID in the function",
    ),
    Allowed(
        path="benchmarks/scheduler_night.py",
        function="reviews_database",
        expressions=frozenset({"name"}),
        reason="CREATE/DROP DATABASE take no bind parameters; the name is built in the function from the review "
               "count (an int) and a git commit id (hex), or a UUID",
    ),
    Allowed(
        path="benchmarks/scheduler_night.py",
        function="airflow_metadata_db",
        expressions=frozenset({"name"}),
        reason="CREATE/DROP DATABASE take no bind parameters; the name is generated from a UUID in the function",
    ),
    Allowed(
        path="benchmarks/bench.py",
        function="empty_scoring_tables",
        expressions=frozenset({"', '.join(quoted)"}),
        reason="TRUNCATE takes no bind parameters; the table names are checked against the package's metadata "
               "and quoted by the dialect",
    ),
]


@dataclass(frozen=True)
class Finding:
    path: str
    line: int
    function: str
    call: str
    how: str
    expressions: frozenset[str]

    def __str__(self) -> str:
        names = ", ".join(sorted(self.expressions)) or "-"
        return f"{self.path}:{self.line} in {self.function}(): {self.call}(...) gets SQL built by {self.how} from {names}"


# ----------------------------------------------------------------------------- the scanner


def _call_name(node: ast.Call) -> str | None:
    """``text`` / ``sa.text``, or one of the execute methods; else None."""
    func = node.func
    if isinstance(func, ast.Name) and func.id == "text":
        return "text"
    if isinstance(func, ast.Attribute):
        if func.attr in SQL_METHODS:
            return func.attr
        if func.attr == "text" and isinstance(func.value, ast.Name) and func.value.id in {"sa", "sqlalchemy"}:
            return "text"
    return None


def _statement(node: ast.Call) -> ast.expr | None:
    if node.args:
        return node.args[0]
    for keyword in node.keywords:
        if keyword.arg in STATEMENT_KEYWORDS:
            return keyword.value
    return None


def _dynamic(expr: ast.expr, assignments: dict[str, list[ast.expr]], seen: frozenset[str] = frozenset()
             ) -> tuple[str, frozenset[str]] | None:
    """How ``expr`` builds a string at run time (and from what), or None when it does not."""
    if isinstance(expr, ast.JoinedStr):
        parts = frozenset(ast.unparse(v.value) for v in expr.values if isinstance(v, ast.FormattedValue))
        return ("an f-string", parts) if parts else None
    if isinstance(expr, ast.BinOp) and isinstance(expr.op, ast.Mod) and _stringish(expr.left, assignments):
        return "% formatting", frozenset({ast.unparse(expr.right)})
    if isinstance(expr, ast.BinOp) and isinstance(expr.op, ast.Add):
        operands = [expr.left, expr.right]
        if any(_stringish(o, assignments) for o in operands) or any(_dynamic(o, assignments, seen) for o in operands):
            dynamic = frozenset(ast.unparse(o) for o in operands if not _constant_string(o))
            return ("+ concatenation", dynamic) if dynamic else None
    if (isinstance(expr, ast.Call) and isinstance(expr.func, ast.Attribute) and expr.func.attr == "format"
            and _stringish(expr.func.value, assignments)):
        args = [*expr.args, *(k.value for k in expr.keywords)]
        return ".format()", frozenset(ast.unparse(a) for a in args)
    if isinstance(expr, ast.Name) and expr.id in assignments and expr.id not in seen:
        for value in assignments[expr.id]:
            found = _dynamic(value, assignments, seen | {expr.id})
            if found:
                return found
    return None


def _constant_string(expr: ast.expr) -> bool:
    return isinstance(expr, ast.Constant) and isinstance(expr.value, str)


def _stringish(expr: ast.expr, assignments: dict[str, list[ast.expr]] | None = None,
               seen: frozenset[str] = frozenset()) -> bool:
    """A string literal, an f-string, or a name/sum that is one (``sql = "..."; sql += x``)."""
    if _constant_string(expr) or isinstance(expr, ast.JoinedStr):
        return True
    if isinstance(expr, ast.BinOp):
        return _stringish(expr.left, assignments, seen) or _stringish(expr.right, assignments, seen)
    if isinstance(expr, ast.Name) and assignments and expr.id in assignments and expr.id not in seen:
        return any(_stringish(v, assignments, seen | {expr.id}) for v in assignments[expr.id])
    return False


def _local_assignments(scope: ast.AST) -> dict[str, list[ast.expr]]:
    """Values assigned to plain names in one function (or module) body, nested functions excluded."""
    found: dict[str, list[ast.expr]] = {}
    stack = list(ast.iter_child_nodes(scope))
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            continue
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    found.setdefault(target.id, []).append(node.value)
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign)) and isinstance(node.target, ast.Name) and node.value:
            value = node.value if isinstance(node, ast.AnnAssign) else ast.BinOp(node.target, node.op, node.value)
            found.setdefault(node.target.id, []).append(value)
        elif isinstance(node, ast.NamedExpr):
            found.setdefault(node.target.id, []).append(node.value)
        stack.extend(ast.iter_child_nodes(node))
    return found


def scan_source(source: str, path: str) -> list[Finding]:
    """Every SQL-sending call in ``source`` whose statement is built from strings."""
    tree = ast.parse(source, filename=path)
    findings: list[Finding] = []
    scopes: list[tuple[str, ast.AST]] = [("<module>", tree)]
    scopes += [(n.name, n) for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    for name, scope in scopes:
        assignments = _local_assignments(scope)
        stack = list(ast.iter_child_nodes(scope))
        while stack:
            node = stack.pop()
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue  # scanned as its own scope
            stack.extend(ast.iter_child_nodes(node))
            if not isinstance(node, ast.Call) or not (call := _call_name(node)):
                continue
            statement = _statement(node)
            found = _dynamic(statement, assignments) if statement is not None else None
            if found:
                findings.append(Finding(path, node.lineno, name, call, found[0], found[1]))
    return sorted(findings, key=lambda f: f.line)


def scanned_files() -> list[Path]:
    files = sorted(p for folder in SCANNED for p in (ROOT / folder).rglob("*.py"))
    assert files, "nothing to scan"
    return files


def is_allowed(finding: Finding) -> bool:
    return any(a.path == finding.path and a.function == finding.function and finding.expressions <= a.expressions
               for a in ALLOWED)


@pytest.fixture(scope="module")
def findings() -> list[Finding]:
    result = []
    for path in scanned_files():
        result += scan_source(path.read_text(encoding="utf-8"), path.relative_to(ROOT).as_posix())
    return result


# ----------------------------------------------------------------------------- the project


def test_no_sql_is_built_from_strings(findings: list[Finding]) -> None:
    violations = [f for f in findings if not is_allowed(f)]
    assert not violations, ("SQL built from strings; use SQLAlchemy Core or bound parameters (:name):\n"
                            + "\n".join(f"  {v}" for v in violations))


def test_allow_list_entries_are_still_needed(findings: list[Finding]) -> None:
    """A stale entry would silently allow a future interpolation in that function."""
    for entry in ALLOWED:
        hits = [f for f in findings if f.path == entry.path and f.function == entry.function]
        assert hits, f"{entry.path}:{entry.function} no longer builds SQL from strings: remove it from ALLOWED"


# ----------------------------------------------------------------------------- the scanner itself


@pytest.mark.parametrize(("source", "how"), [
    ('def f(conn, name):\n    conn.execute(text(f"SELECT * FROM reviews WHERE text = \'{name}\'"))', "an f-string"),
    ('def f(conn, rid):\n    conn.execute(text("DELETE FROM reviews WHERE review_id = %s" % rid))', "% formatting"),
    ('def f(conn, rid):\n    conn.exec_driver_sql("SELECT " + rid)', "+ concatenation"),
    ('def f(cur, rid):\n    cur.execute("SELECT {}".format(rid))', ".format()"),
    ('def f(cur, rid):\n    sql = "SELECT * FROM t WHERE id = " + rid\n    cur.execute(sql)', "+ concatenation"),
    ('def f(conn, rid):\n    q = f"SELECT {rid}"\n    stmt = q\n    conn.execute(text(stmt))', "an f-string"),
    ('def f(conn, rid):\n    conn.execute(statement=sa.text(f"SELECT {rid}"))', "an f-string"),
    ('def f(cur, t):\n    cur.executemany(f"INSERT INTO {t} VALUES (%s)", [(1,)])', "an f-string"),
    ('def f(conn, x):\n    sql = "SELECT 1"\n    sql += x\n    conn.execute(text(sql))', "+ concatenation"),
])
def test_scanner_finds_sql_built_from_strings(source: str, how: str) -> None:
    found = scan_source(source, "example.py")
    assert [f.how for f in found] == [how]


@pytest.mark.parametrize("source", [
    'def f(conn, rid):\n    conn.execute(text("SELECT * FROM reviews WHERE review_id = :rid"), {"rid": rid})',
    'def f(conn, rid):\n    conn.execute(select(reviews).where(reviews.c.review_id == rid))',
    'def f(cur):\n    cur.execute("PRAGMA " "foreign_keys=ON")',
    'def f(conn):\n    conn.execute(text("SELECT 1 " + "FROM reviews"))',
    'def f(cur, path):\n    cur.execute(path.read_text(encoding="utf-8"))',
    'def f(log, x):\n    log.info(f"executing {x}")\n    print("a" + x)',
    'def f(conn):\n    conn.execute(text(VIEW_SQL.replace("CREATE OR REPLACE VIEW", "CREATE VIEW IF NOT EXISTS")))',
])
def test_scanner_accepts_bound_parameters_and_constants(source: str) -> None:
    assert scan_source(source, "example.py") == []


def test_allow_list_names_only_what_it_allows() -> None:
    source = ('def copy_upsert(cursor, value):\n'
              '    cursor.execute(f"TRUNCATE {stage}")\n'
              '    cursor.execute(f"DELETE FROM {stage} WHERE text = \'{value}\'")\n')
    found = scan_source(source, "moderation/db.py")
    assert [is_allowed(f) for f in found] == [True, False]
