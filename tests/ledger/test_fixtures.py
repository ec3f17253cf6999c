"""Bad fixtures files: each error names the file, the line, the entry and the problem."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest

from ledger.__main__ import main
from ledger.errors import FixtureError
from ledger.fixtures import read_fixtures
from tests.conftest import PgCluster

# Valid as it stands; each case below breaks one thing. Nothing of it is ever committed: every
# case fails, and a failed load writes nothing.
GOOD = """\
[[customers]]
id = 9100001
name = "First"

[[customers]]
id = 9100002
name = "Second"

[[customers.accounts]]
number = "FIX-9100002-20"
type = "20"
currency = "EUR"
opening_balance_minor = 1_000

[[customers.cards]]
pan = "4910000000000019"
expiry = "2912"
currency = "EUR"
max_per_txn_minor = 5_000
daily_amount_minor = 10_000
daily_count = 3
accounts = { "20" = "FIX-9100002-20" }

[[customers.cards]]  # a second card, on the same account
pan = "4910000000000027"
expiry = "2912"
currency = "EUR"
max_per_txn_minor = 5_000
daily_amount_minor = 10_000
daily_count = 3
accounts = { "20" = "FIX-9100002-20" }

[[terminals]]
id = "FIXT0001"
location = "test"
currency = "EUR"

[[ terminals ]]
id = "FIXT0002"
location = "test"
currency = "EUR"
"""


def _bad(old: str, new: str, *, count: int = 1) -> str:
    assert GOOD.count(old) >= count, old
    return GOOD.replace(old, new, count)


# (file text, error after "<path>"); the line is that of the entry's [[table]] header.
CASES = [
    pytest.param(
        _bad("id = 9100001", 'id = "9100001"'),
        ":1: customer #1: field 'id' must be an integer, got a string",
        id="wrong type",
    ),
    pytest.param(
        _bad("id = 9100002", "id = 0"),
        ":5: customer #2: field 'id' must be positive (0 is the house)",
        id="house id",
    ),
    pytest.param(
        _bad('name = "Second"\n', ""),
        ":5: customer #2: field 'name' is missing",
        id="missing field",
    ),
    pytest.param(
        _bad("opening_balance_minor = 1_000", "opening_balance_minr = 1_000"),
        ":9: customer #2, account #1: unknown field 'opening_balance_minr' (known: number, type,"
        " currency, opening_balance_minor, floor_minor)",
        id="misspelt optional field",
    ),
    pytest.param(
        _bad('type = "20"', 'type = "40"'),
        ":9: customer #2, account #1: field 'type' must be one of 10, 20, 30, got '40'",
        id="account type",
    ),
    pytest.param(
        _bad("daily_count = 3", "daily_count = true", count=2).replace(
            "daily_count = true", "daily_count = 3", 1
        ),
        ":24: customer #2, card #2: field 'daily_count' must be an integer, got a boolean",
        id="boolean for an integer, second card",
    ),
    pytest.param(
        _bad('pan = "4910000000000019"', 'pan = "4910000000000018"'),
        ":15: customer #2, card #1: field 'pan' is not a Luhn-valid card number",
        id="check digit",
    ),
    pytest.param(
        _bad('accounts = { "20" = "FIX-9100002-20" }', 'accounts = { "40" = "FIX-9100002-20" }'),
        ":15: customer #2, card #1: field 'accounts' maps account types (10, 20, 30) to account"
        " numbers, got '40' = a string",
        id="card account type",
    ),
    pytest.param(
        _bad("max_per_txn_minor = 5_000", "max_per_txn_minor = 50.0"),
        ":15: customer #2, card #1: field 'max_per_txn_minor' must be an integer, got a float",
        id="float for an integer",
    ),
    pytest.param(
        _bad('id = "FIXT0002"\nlocation = "test"\n', 'id = "FIXT0002"\n'),
        ":38: terminal #2: field 'location' is missing",
        id="header written with spaces",
    ),
    pytest.param(
        'terminals = [{ id = "FIXT0003", currency = "EUR" }]\n',
        ": terminal #1: field 'location' is missing",
        id="inline array: no header, no line",
    ),
    pytest.param(
        "[[custmers]]\nid = 1\n",
        ": unknown table 'custmers' (known: [[customers]], [[terminals]])",
        id="unknown table",
    ),
    pytest.param(
        "customers = 3\n",
        ": 'customers' must be an array of tables ([[customers]])",
        id="not an array of tables",
    ),
    pytest.param(
        _bad("[[customers.accounts]]", "[customers.accounts]"),
        ":5: customer #2: field 'accounts' must be an array of tables, got a table",
        id="table for an array of tables",
    ),
]


@pytest.mark.parametrize(("text", "error"), CASES)
def test_a_bad_entry_is_named_by_file_line_table_and_index(
    tmp_path: Path, text: str, error: str
) -> None:
    path = tmp_path / "fixtures.toml"
    path.write_text(text)
    with pytest.raises(FixtureError) as raised:
        read_fixtures(path)
    assert str(raised.value) == f"{path}{error}"


def test_the_good_file_is_good(tmp_path: Path) -> None:
    path = tmp_path / "fixtures.toml"
    path.write_text(GOOD)
    assert len(read_fixtures(path).data["customers"]) == 2


def test_a_file_that_is_not_toml_or_not_there_is_named(tmp_path: Path) -> None:
    path = tmp_path / "fixtures.toml"
    with pytest.raises(FixtureError, match=f"^{path}: No such file or directory$"):
        read_fixtures(path)
    path.write_text("[[customers]\n")
    with pytest.raises(FixtureError, match=rf"^{path}: not a TOML file: .*\(at line 1, column"):
        read_fixtures(path)


@pytest.mark.parametrize(
    ("old", "new", "error"),
    [
        pytest.param(
            '"20" = "FIX-9100002-20" }\n\n[[terminals]]',
            '"10" = "FIX-9100002-20" }\n\n[[terminals]]',
            ":24: customer #2, card #2: no 10 account FIX-9100002-20 of this customer",
            id="card linked to an account the customer lacks",
        ),
        pytest.param(
            'currency = "EUR"\n\n[[ terminals ]]',
            'currency = "EURO"\n\n[[ terminals ]]',
            ":33: terminal #1: refused by the database: value too long for type character(3)",
            id="value the database refuses",
        ),
    ],
)
def test_an_entry_the_database_refuses_is_named_too(
    pg_cluster: PgCluster, tmp_path: Path, old: str, new: str, error: str
) -> None:
    path = tmp_path / "fixtures.toml"
    path.write_text(_bad(old, new))
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["load", str(path), "--dsn", pg_cluster.owner_dsn])
    assert code == 2
    assert err.getvalue() == f"error: {path}{error}\n"
