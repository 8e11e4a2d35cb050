"""Which types a written cast converts from: PostgreSQL runs a cast's function only for a value of its source type."""

from __future__ import annotations

from dataclasses import dataclass

from proxy.policy.tree import Node, names_of

# PostgreSQL looks a cast up by the base types of the value and of the target (find_coercion_pathway: a cast from or
# to a domain is never used), and for two arrays with no cast of their own, by their element types. `expr::T` runs
# the function of the cast (S -> T) only when expr's type is S, a domain over S, or (for an array target) an array
# of either; an untyped literal or NULL is read by T's input function and runs no cast at all. A length coercion (a
# cast (T -> T), run for a type modifier: `x::T(3)`, a domain over T(3)) runs whatever the value's type.
# Markers among a cast's source names (the snapshot's `CAST_SOURCE` rows; a type's name is never empty nor holds
# a NUL, so neither is the name of a type):
ANY = "\x00any"  # the cast runs for a value of any type (a length coercion)
PARAM = "\x00param"  # its source type is built in: a Parse may declare a parameter of it (others are refused)
SEP = "\x00"  # joins a target key and a function into a `CAST_SOURCE` key
UNTYPED: frozenset[str] = frozenset()  # an untyped literal or NULL: no cast is looked up

# Built-in functions whose result type is fixed (every overload of them in pg_catalog): the type of `f(...)` when
# no routine of the database overloads the name (its `SHADOW` rows) or the call names pg_catalog.
FIXED_RESULTS = {"count": "int8", "now": "timestamptz"}
# SQL value functions (CURRENT_DATE, CURRENT_USER, ...): keywords, no lookup.
_VALUE_FUNCTIONS = {"DATE": "date", "TIME": "timetz", "TIMESTAMP": "timestamptz", "LOCALTIME": "time",
                    "LOCALTIMESTAMP": "timestamp", "ROLE": "name", "USER": "name", "SESSION_USER": "name",
                    "CATALOG": "name", "SCHEMA": "name"}


@dataclass(frozen=True, slots=True)
class WrittenCast:
    """One `expr::T` / `CAST(expr AS T)`: the target's key, and the names expr's type may have (`UNTYPED`: none
    looked up; None: any type). `via`: a built-in whose fixed result it is, known only while no routine of the
    database overloads that name; `param`: the number of a parameter cast, resolved with the statement
    (`resolve_params`); `spelled`: the target as written (names and array bounds), which a parameter of unknown
    type takes."""

    target: str
    sources: frozenset[str] | None
    via: str = ""
    param: int = 0
    spelled: tuple[tuple[str, ...], bool] = ((), False)
    # the value may be a row cast to a composite type: PostgreSQL casts each field to its column's type, running any
    # cast of the database (red team 22c F1: `ROW('a'::app_type)::some_table` ran the app's cast to text)
    fields: bool = False


def type_key(type_name: Node) -> str:
    """The snapshot's key of a written type: its last name, with "[]" when written with array bounds (`text[]`,
    `_text` names the same type: the snapshot has both)."""
    names = names_of(type_name.get("names"))
    return (names[-1] if names else "") + ("[]" if type_name.get("arrayBounds") else "")


# Built-in scalar types a record value is never cast to field by field (a cast to one of them, qualified with
# pg_catalog or not, is an I/O conversion or a cast of the value as a whole): no temporary relation may take one of
# these names (classify.gate), whose row type pg_temp would put first.
SCALARS = frozenset({
    "text", "varchar", "bpchar", "char", "name", "int2", "int4", "int8", "smallint", "integer", "int", "bigint",
    "numeric", "decimal", "float4", "float8", "real", "bool", "boolean", "date", "time", "timetz", "timestamp",
    "timestamptz", "interval", "uuid", "json", "jsonb", "bytea", "money", "inet", "cidr", "macaddr", "oid", "bit",
    "varbit", "xml", "regclass", "regtype", "regproc", "regprocedure", "regnamespace", "regrole", "tsvector",
    "tsquery", "regoper", "regoperator", "regconfig", "regdictionary", "regcollation", "point", "line", "lseg", "box",
    "path", "polygon", "circle", "macaddr8", "pg_lsn", "pg_snapshot", "txid_snapshot", "int4range", "int8range",
    "numrange", "tsrange", "tstzrange", "daterange", "int4multirange", "int8multirange", "nummultirange",
    "tsmultirange", "tstzmultirange", "datemultirange"})
# information_schema's domains over scalar types (drivers cast catalog names to them), written qualified
_INFORMATION_SCHEMA = frozenset({"sql_identifier", "cardinal_number", "character_data", "yes_or_no", "time_stamp"})


def _rows(tag: str, body: Node) -> bool:
    """Whether an argument written so is a row value or an array of them (ROW(...), ARRAY[ROW(...)])."""
    if tag == "RowExpr":
        return True
    return tag == "A_ArrayExpr" and any(type(e) is dict and ("RowExpr" in e or "SubLink" in e)
                                        for e in body.get("elements") or ())


def _scalar(spelled: tuple[tuple[str, ...], bool]) -> bool:
    """Whether the target is a built-in scalar type (never a composite a row is cast to field by field)."""
    names = spelled[0]
    if names[:-1] == ("information_schema",):
        return names[-1] in _INFORMATION_SCHEMA
    return bool(names) and names[-1] in SCALARS and (len(names) == 1 or names[:-1] == ("pg_catalog",))


def written(cast: Node) -> WrittenCast:
    """The cast of a TypeCast body, with what its argument's type is known to be."""
    type_name = cast.get("typeName") or {}
    target = type_key(type_name)
    spelled = (names_of(type_name.get("names")), bool(type_name.get("arrayBounds")))
    arg = cast.get("arg")
    if type(arg) is not dict or len(arg) != 1:
        return WrittenCast(target, None, spelled=spelled, fields=not _scalar(spelled))
    (tag, body), = arg.items()
    if _rows(tag, body):
        return WrittenCast(target, None, spelled=spelled, fields=not _scalar(spelled))
    if tag == "A_Const":
        return WrittenCast(target, _constant(body), spelled=spelled)
    if tag == "TypeCast":
        inner = type_key(body.get("typeName") or {})
        return WrittenCast(target, frozenset({inner}) if inner else None, spelled=spelled)
    if tag == "ParamRef":
        return WrittenCast(target, None, param=int(body.get("number") or 0), spelled=spelled)
    if tag == "SQLValueFunction":
        op = str(body.get("op", "")).removeprefix("SVFOP_").removeprefix("CURRENT_").removesuffix("_N")
        result = _VALUE_FUNCTIONS.get(op)
        return WrittenCast(target, frozenset({result}) if result else None, spelled=spelled)
    if tag == "FuncCall":
        names = names_of(body.get("funcname"))
        # (`now(x)` of a row x is its column x.now, of any type: red team 22c F2; `count(x)` is the aggregate)
        if names and names[-1] in FIXED_RESULTS and (len(names) == 1 or names[0] == "pg_catalog") \
                and len(names) <= 2 and (names[-1] != "now" or not body.get("args")):
            return WrittenCast(target, frozenset({FIXED_RESULTS[names[-1]]}),
                               via=names[-1] if len(names) == 1 else "", spelled=spelled)
    # (a subquery, a whole-row reference, anything of a type not known here may be a row)
    return WrittenCast(target, None, spelled=spelled, fields=not _scalar(spelled))


_INT4 = frozenset({"int4"})
_INT8 = frozenset({"int8"})
_NUMERIC = frozenset({"numeric"})
_ANY_NUMBER = frozenset({"int4", "int8", "numeric"})


def _float_constant(text: str) -> frozenset[str]:
    """The type PostgreSQL's make_const gives a T_Float constant: an integer that fits is int4 (`-2147483648`,
    `-0x80000000`, `-2_147_483_648` are read back into int4: review 22 F1), then int8, else numeric."""
    digits = text.replace("_", "").strip()
    if "." in digits or (not digits.lstrip("+-").lower().startswith("0x") and "e" in digits.lower()):
        return _NUMERIC
    try:
        value = int(digits, 0)
    except ValueError:
        try:
            value = int(digits, 10)  # (leading zeros)
        except ValueError:
            return _ANY_NUMBER
    if -(1 << 31) <= value < (1 << 31):
        return _INT4
    return _INT8 if -(1 << 63) <= value < (1 << 63) else _NUMERIC


def _constant(body: Node) -> frozenset[str] | None:
    """The type of a constant (PostgreSQL's make_const): a string or NULL is untyped."""
    if "sval" in body or body.get("isnull"):
        return UNTYPED
    if "ival" in body:
        return frozenset({"int4"})
    if "fval" in body:  # an integer the scanner did not take as int4, or a decimal
        value = body["fval"]
        return _float_constant(str(value.get("fval", "")) if type(value) is dict else str(value))
    if "boolval" in body:
        return frozenset({"bool"})
    if "bsval" in body:
        return frozenset({"bit"})
    return None


def resolve_params(casts: list[WrittenCast], uses: dict[int, int], declared: list[str] | None) -> list[WrittenCast]:
    """The casts with each parameter's type: `declared` (PREPARE's argument types, by key; None: parameters whose
    types the statement cannot know, as in a routine's body) first; a parameter of unknown type that every use of
    casts to one written type takes that type (PostgreSQL's variable_coerce_param_hook: no cast runs), or a built-in
    type a Parse declared (`PARAM`); any other use leaves it unknown (its first use may have fixed its type)."""
    spelled: dict[int, set[tuple[tuple[str, ...], bool]]] = {}
    counts: dict[int, int] = {}
    for cast in casts:
        if cast.param:
            spelled.setdefault(cast.param, set()).add(cast.spelled)
            counts[cast.param] = counts.get(cast.param, 0) + 1
    out = []
    for cast in casts:
        n = cast.param
        if n:
            if declared is not None and n <= len(declared):
                cast = WrittenCast(cast.target, frozenset({declared[n - 1]}), spelled=cast.spelled)
            elif declared is not None and len(spelled[n]) == 1 and counts[n] == uses.get(n, 0):
                cast = WrittenCast(cast.target, frozenset({cast.target, PARAM}), spelled=cast.spelled)
        out.append(cast)
    return out


def may_run(row_sources: tuple[str, ...] | None, sources: frozenset[str] | None) -> bool:
    """Whether a cast whose source names are `row_sources` (None: not recorded, any) may run for a value whose
    type's names are `sources` (None: any)."""
    return row_sources is None or sources is None or ANY in row_sources or not sources.isdisjoint(row_sources)
