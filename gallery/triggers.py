"""The SQL with which the database itself keeps each gallery's counters and its prompt index.

Triggers rather than Python, so that every write counts, whichever path makes it: a form post,
a worker's guarded UPDATE, a bulk delete, a cascade from a deleted account, the admin, a raw
import. Each statement is idempotent (IF NOT EXISTS, OR REPLACE): migration 0011 installs them,
and so does every `migrate` afterwards on SQLite, where Django rebuilds a table to alter it and
a dropped table takes its triggers with it (gallery.apps).

The counters are `GalleryCounts` rows (gallery.models); `manage.py recount_gallery` repairs them.
The prompt index serves `GenerationQuerySet.search`: on SQLite an FTS5 table with the trigram
tokenizer, on PostgreSQL a pg_trgm GIN index on UPPER(prompt), the expression Django's
`icontains` compares. Both answer substring searches of three characters or more.
"""

from __future__ import annotations

from django.db.backends.base.base import BaseDatabaseWrapper

# A generation's row counted in its owner's counters (`new`), and taken out of them (`old`);
# an update that changes what counts does both.
_SQLITE_COUNT_NEW = """\
        INSERT INTO gallery_gallerycounts (owner_id, total, done, failed, favorites)
        VALUES (new.owner_id, 1, new.status = 'done', new.status = 'failed', new.is_favorite)
        ON CONFLICT (owner_id) DO UPDATE SET
            total = total + 1,
            done = done + excluded.done,
            failed = failed + excluded.failed,
            favorites = favorites + excluded.favorites;
"""
_SQLITE_UNCOUNT_OLD = """\
        UPDATE gallery_gallerycounts SET
            total = total - 1,
            done = done - (old.status = 'done'),
            failed = failed - (old.status = 'failed'),
            favorites = favorites - old.is_favorite
        WHERE owner_id = old.owner_id;
"""

# 'done' and 'failed' are Generation.Status.DONE and FAILED: a change of status between two
# unfinished states (most of a generation's writes) touches no counter and locks no row, on
# either database.
SQLITE = [
    f"""
    CREATE TRIGGER IF NOT EXISTS gallery_counts_insert AFTER INSERT ON gallery_generation
    BEGIN
{_SQLITE_COUNT_NEW}    END
    """,
    f"""
    CREATE TRIGGER IF NOT EXISTS gallery_counts_delete AFTER DELETE ON gallery_generation
    BEGIN
{_SQLITE_UNCOUNT_OLD}    END
    """,
    f"""
    CREATE TRIGGER IF NOT EXISTS gallery_counts_update
    AFTER UPDATE OF owner_id, status, is_favorite ON gallery_generation
    WHEN old.owner_id != new.owner_id
        OR (old.status = 'done') != (new.status = 'done')
        OR (old.status = 'failed') != (new.status = 'failed')
        OR old.is_favorite != new.is_favorite
    BEGIN
{_SQLITE_UNCOUNT_OLD}{_SQLITE_COUNT_NEW}    END
    """,
    # An external-content table: it holds the index only, the prompts stay in
    # gallery_generation. Its rowid is the generation's id.
    """
    CREATE VIRTUAL TABLE IF NOT EXISTS gallery_prompt_index USING fts5(
        prompt, content='gallery_generation', content_rowid='id', tokenize='trigram'
    )
    """,
    """
    CREATE TRIGGER IF NOT EXISTS gallery_prompt_index_insert AFTER INSERT ON gallery_generation
    BEGIN
        INSERT INTO gallery_prompt_index (rowid, prompt) VALUES (new.id, new.prompt);
    END
    """,
    """
    CREATE TRIGGER IF NOT EXISTS gallery_prompt_index_delete AFTER DELETE ON gallery_generation
    BEGIN
        INSERT INTO gallery_prompt_index (gallery_prompt_index, rowid, prompt)
        VALUES ('delete', old.id, old.prompt);
    END
    """,
    """
    CREATE TRIGGER IF NOT EXISTS gallery_prompt_index_update
    AFTER UPDATE OF prompt ON gallery_generation
    BEGIN
        INSERT INTO gallery_prompt_index (gallery_prompt_index, rowid, prompt)
        VALUES ('delete', old.id, old.prompt);
        INSERT INTO gallery_prompt_index (rowid, prompt) VALUES (new.id, new.prompt);
    END
    """,
]

SQLITE_DROP = [
    "DROP TRIGGER IF EXISTS gallery_counts_insert",
    "DROP TRIGGER IF EXISTS gallery_counts_delete",
    "DROP TRIGGER IF EXISTS gallery_counts_update",
    "DROP TRIGGER IF EXISTS gallery_prompt_index_insert",
    "DROP TRIGGER IF EXISTS gallery_prompt_index_delete",
    "DROP TRIGGER IF EXISTS gallery_prompt_index_update",
    "DROP TABLE IF EXISTS gallery_prompt_index",
]

# Statement triggers with transition tables: one UPDATE of each owner's row per statement,
# however many rows it wrote (a row trigger would update one counter row 100,000 times in a bulk
# import, each new version of it in the same transaction found at the end of a longer chain).
# Rows are locked in owner order, so that two statements never wait for each other's. A
# delete only ever updates: the row may be gone already with its deleted account.
_DELTAS = """
    SELECT owner_id, SUM(total) AS total, SUM(done) AS done, SUM(failed) AS failed,
        SUM(favorites) AS favorites
    FROM (%s) AS changes GROUP BY owner_id
"""
_ADDED = """
    SELECT owner_id, 1 AS total, (status = 'done')::int AS done,
        (status = 'failed')::int AS failed, is_favorite::int AS favorites
    FROM added
"""
_REMOVED = """
    SELECT owner_id, -1 AS total, -(status = 'done')::int AS done,
        -(status = 'failed')::int AS failed, -is_favorite::int AS favorites
    FROM removed
"""
_UPSERT = """
    INSERT INTO gallery_gallerycounts AS counts (owner_id, total, done, failed, favorites)
    SELECT * FROM (%s) AS deltas
    WHERE total != 0 OR done != 0 OR failed != 0 OR favorites != 0
    ORDER BY owner_id
    ON CONFLICT (owner_id) DO UPDATE SET
        total = counts.total + excluded.total,
        done = counts.done + excluded.done,
        failed = counts.failed + excluded.failed,
        favorites = counts.favorites + excluded.favorites
"""
_SUBTRACT = """
    UPDATE gallery_gallerycounts AS counts SET
        total = counts.total + deltas.total,
        done = counts.done + deltas.done,
        failed = counts.failed + deltas.failed,
        favorites = counts.favorites + deltas.favorites
    FROM (
        SELECT owner_id FROM gallery_gallerycounts
        WHERE owner_id IN (SELECT owner_id FROM removed)
        ORDER BY owner_id FOR UPDATE
    ) AS locked, (%s) AS deltas
    WHERE counts.owner_id = locked.owner_id AND deltas.owner_id = locked.owner_id
"""

POSTGRESQL = [
    f"""
    CREATE OR REPLACE FUNCTION gallery_count_generations() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'INSERT' THEN
            {_UPSERT % (_DELTAS % _ADDED)};
        ELSIF TG_OP = 'UPDATE' THEN
            {_UPSERT % (_DELTAS % (_ADDED + " UNION ALL " + _REMOVED))};
        ELSE
            {_SUBTRACT % (_DELTAS % _REMOVED)};
        END IF;
        RETURN NULL;
    END
    $$
    """,
    """
    CREATE OR REPLACE TRIGGER gallery_counts_insert AFTER INSERT ON gallery_generation
    REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION gallery_count_generations()
    """,
    """
    CREATE OR REPLACE TRIGGER gallery_counts_update AFTER UPDATE ON gallery_generation
    REFERENCING OLD TABLE AS removed NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION gallery_count_generations()
    """,
    """
    CREATE OR REPLACE TRIGGER gallery_counts_delete AFTER DELETE ON gallery_generation
    REFERENCING OLD TABLE AS removed
    FOR EACH STATEMENT EXECUTE FUNCTION gallery_count_generations()
    """,
    # pg_trgm is a trusted extension: the database's owner may create it, no superuser needed.
    "CREATE EXTENSION IF NOT EXISTS pg_trgm",
    """
    CREATE INDEX IF NOT EXISTS gen_prompt_trigram ON gallery_generation
    USING gin (UPPER(prompt) gin_trgm_ops)
    """,
]

POSTGRESQL_DROP = [
    "DROP INDEX IF EXISTS gen_prompt_trigram",
    "DROP TRIGGER IF EXISTS gallery_counts_insert ON gallery_generation",
    "DROP TRIGGER IF EXISTS gallery_counts_update ON gallery_generation",
    "DROP TRIGGER IF EXISTS gallery_counts_delete ON gallery_generation",
    "DROP FUNCTION IF EXISTS gallery_count_generations()",
]


def install(connection: BaseDatabaseWrapper) -> None:
    """Create the triggers and the prompt index where they are missing."""
    statements = {"sqlite": SQLITE, "postgresql": POSTGRESQL}.get(connection.vendor, [])
    with connection.cursor() as cursor:
        for sql in statements:
            cursor.execute(sql)


def uninstall(connection: BaseDatabaseWrapper) -> None:
    statements = {"sqlite": SQLITE_DROP, "postgresql": POSTGRESQL_DROP}.get(connection.vendor, [])
    with connection.cursor() as cursor:
        for sql in statements:
            cursor.execute(sql)


def rebuild_prompt_index(connection: BaseDatabaseWrapper) -> None:
    """Index every prompt again from gallery_generation (SQLite; PostgreSQL's index is kept by
    the database itself)."""
    if connection.vendor == "sqlite":
        with connection.cursor() as cursor:
            cursor.execute(
                "INSERT INTO gallery_prompt_index (gallery_prompt_index) VALUES ('rebuild')"
            )
