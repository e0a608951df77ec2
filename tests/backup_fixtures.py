"""Helpers for the backup and restore tests (their fixtures, full_db and target, are in conftest)."""

import psycopg

TABLES = ("knowledge_artifacts", "artifact_usage", "places")


def checksums(settings, dbname=None, tables=TABLES):
    """A content checksum per table (every column, every row, in a fixed order)."""
    result = {}
    with psycopg.connect(**settings.conninfo(dbname)) as conn:
        for table in tables:
            exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()[0]
            if exists:
                result[table] = conn.execute(
                    psycopg.sql.SQL(
                        "SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) FROM {} t"
                    ).format(psycopg.sql.Identifier(table))
                ).fetchone()
    return result


def drop(settings, name):
    with psycopg.connect(**settings.conninfo("postgres"), autocommit=True) as conn:
        conn.execute(
            psycopg.sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                psycopg.sql.Identifier(name)
            )
        )
