"""No secret is ever printed: malformed URLs, unreachable servers, every output channel."""

import pytest
from conftest import cli_in_process, run_cli

from singularity_ops.config import redact, register_secret

# Each password holds RET9 after the character that breaks parsing, so a test can also catch
# half a password being shown (as a host, a port or a database name).
MALFORMED = [
    "postgresql+psycopg://u:SECRET9@127.0.0.1:1/singularity",  # SQLAlchemy's spelling
    "postgresq://u:SECRET9@127.0.0.1:1/db",  # a typo in the scheme
    "mysql://u:SECRET9@127.0.0.1:1/db",  # another database
    "u:SECRET9@127.0.0.1:1/db",  # no scheme at all
    "postgresql://u:SEC RET9@127.0.0.1:1/db",  # a space in the password
    "postgresql://u:SECRET9%zz@127.0.0.1:1/db",  # a bad percent escape
    "postgresql://u:SEC@RET9@127.0.0.1:1/db",  # an unencoded @
    "postgresql://u:SE/CRET9@127.0.0.1:1/db",  # an unencoded /
    "postgresql://u:SECRET9@127.0.0.1:notaport/db",  # a port that is not a number
    "postgresql://u:SECRET9@[::1/db",  # an unclosed IPv6 bracket
    "postgresql://u:SECRET9@127.0.0.1:1/db?sslmode=bogus",  # a bad parameter
    "postgresql://u:SE:CRET9@127.0.0.1:1/db",  # valid, unreachable: the connection error
    "postgresql://u:SECRET9@127.0.0.1:1/db",  # valid, unreachable
]
COMMANDS = [
    ("status",),
    ("status", "--json"),
    ("env",),
    ("env", "--json"),
    ("migrate", "--json"),
    ("ensure-db", "--timeout", "0"),
    ("search", "anything", "--json"),
    ("backup", "--json"),
    ("-v", "record-usage", "prompt", "x", "--success"),
]


def check_never_shown(run, url: str, tmp_path) -> None:
    for args in COMMANDS:
        out = run(*args, env={"DATABASE_URL": url}, cwd=tmp_path)
        shown = out.stdout + out.stderr
        # env only prints what the URL resolves to: it succeeds for the valid ones; status
        # reports an unreachable server as data, with exit code 3
        allowed = {"env": (0, 1, 2), "status": (2, 3)}.get(args[0], (1, 2))
        assert out.returncode in allowed, (args, shown)
        assert "RET9" not in shown, (args, shown)
        assert "Traceback" not in shown and "this is a bug" not in shown, (args, shown)
        if "--json" in args and out.returncode:
            assert '"exit_code"' in out.stdout or '"reachable": false' in out.stdout, args


@pytest.mark.parametrize("url", MALFORMED)
def test_a_malformed_or_unreachable_url_never_shows_its_password(url, tmp_path):
    """Every URL through every command, in process (what Python prints)."""
    check_never_shown(cli_in_process, url, tmp_path)


@pytest.mark.parametrize(
    "url", ["postgresql://u:SEC@RET9@127.0.0.1:1/db", "postgresql://u:SE:CRET9@127.0.0.1:1/db"]
)
def test_nor_does_a_real_process_on_any_channel(url, tmp_path):
    """The hardest URLs again as real processes: libpq, pg_dump and anything else that
    writes to the process's own stderr is seen too."""
    check_never_shown(lambda *a, **kw: run_cli(*a, timeout=60, **kw), url, tmp_path)


def test_pgpassword_is_redacted_even_where_a_server_echoes_it(tmp_path):
    # A server (or a proxy) that puts the password into its error text still does not get it shown.
    out = run_cli(
        "--database-url",
        "postgresql://u@127.0.0.1:1/db?application_name=PWSECRET9",
        "status",
        env={"PGPASSWORD": "PWSECRET9"},
        cwd=tmp_path,
    )
    assert out.returncode == 3  # status reports the unreachable server
    assert "unreachable" in out.stdout
    assert "PWSECRET9" not in out.stdout + out.stderr


def test_redact_covers_any_scheme_and_an_unencoded_at():
    assert redact("mysql://u:pw@h/db") == "mysql://u:***@h/db"
    assert redact("postgresql+psycopg://u:p@ss@h/db x") == "postgresql+psycopg://u:***@h/db x"
    register_secret("known-secret-value")
    assert redact("a known-secret-value and known%2Dsecret") == "a *** and known%2Dsecret"
    assert redact("encoded known-secret-value") == "encoded ***"


def test_the_remembered_secrets_are_bounded_and_keep_the_newest():
    from singularity_ops import config

    for n in range(config.MAX_SECRETS * 3):
        register_secret(f"password-number-{n}")
    assert len(config._SECRETS) <= config.MAX_SECRETS
    newest = f"password-number-{config.MAX_SECRETS * 3 - 1}"
    assert redact(f"login {newest} failed") == "login *** failed"
    register_secret("known-secret-value")  # what other tests of this session rely on
