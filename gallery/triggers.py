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

# 'done' and 'failed' are Generation.Status.DONE and FAILED: a change of status between two
# unfinished states (most of a generation's writes) touches no counter and locks no row.
SQLITE = [
    """
    CREATE TRIGGER IF NOT EXISTS gallery_counts_insert AFTER INSERT ON gallery_generation
    BEGIN
        INSERT INTO gallery_gallerycounts (owner_id, total, done, failed, favorites)
        VALUES (new.owner_id, 1, new.status = 'done', new.status = 'failed', new.is_favorite)
        ON CONFLICT (owner_id) DO UPDATE SET
            total = total + 1,
            done = done + excluded.done,
            failed = failed + excluded.failed,
            favorites = favorites + excluded.favorites;
    END
    """,
    """
    CREATE TRIGGER IF NOT EXISTS gallery_counts_delete AFTER DELETE ON gallery_generation
    BEGIN
        UPDATE gallery_gallerycounts SET
            total = total - 1,
            done = done - (old.status = 'done'),
            failed = failed - (old.status = 'failed'),
            favorites = favorites - old.is_favorite
        WHERE owner_id = old.owner_id;
    END
    """,
    """
    CREATE TRIGGER IF NOT EXISTS gallery_counts_update
    AFTER UPDATE OF owner_id, status, is_favorite ON gallery_generation
    WHEN old.owner_id != new.owner_id
        OR (old.status = 'done') != (new.status = 'done')
        OR (old.status = 'failed') != (new.status = 'failed')
        OR old.is_favorite != new.is_favorite
    BEGIN
        UPDATE gallery_gallerycounts SET
            total = total - 1,
            done = done - (old.status = 'done'),
            failed = failed - (old.status = 'failed'),
            favorites = favorites - old.is_favorite
        WHERE owner_id = old.owner_id;
        INSERT INTO gallery_gallerycounts (owner_id, total, done, failed, favorites)
        VALUES (new.owner_id, 1, new.status = 'done', new.status = 'failed', new.is_favorite)
        ON CONFLICT (owner_id) DO UPDATE SET
            total = total + 1,
            done = done + excluded.done,
            failed = failed + excluded.failed,
            favorites = favorites + excluded.favorites;
    END
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

POSTGRESQL = [
    """
    CREATE OR REPLACE FUNCTION gallery_count_generation() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP IN ('UPDATE', 'DELETE') THEN
            UPDATE gallery_gallerycounts SET
                total = total - 1,
                done = done - (OLD.status = 'done')::int,
                failed = failed - (OLD.status = 'failed')::int,
                favorites = favorites - OLD.is_favorite::int
            WHERE owner_id = OLD.owner_id;
        END IF;
        IF TG_OP IN ('INSERT', 'UPDATE') THEN
            INSERT INTO gallery_gallerycounts AS counts (owner_id, total, done, failed, favorites)
            VALUES (
                NEW.owner_id, 1, (NEW.status = 'done')::int, (NEW.status = 'failed')::int,
                NEW.is_favorite::int
            )
            ON CONFLICT (owner_id) DO UPDATE SET
                total = counts.total + 1,
                done = counts.done + excluded.done,
                failed = counts.failed + excluded.failed,
                favorites = counts.favorites + excluded.favorites;
        END IF;
        RETURN NULL;
    END
    $$
    """,
    """
    CREATE OR REPLACE TRIGGER gallery_counts_insert_delete
    AFTER INSERT OR DELETE ON gallery_generation
    FOR EACH ROW EXECUTE FUNCTION gallery_count_generation()
    """,
    """
    CREATE OR REPLACE TRIGGER gallery_counts_update
    AFTER UPDATE OF owner_id, status, is_favorite ON gallery_generation
    FOR EACH ROW WHEN (
        OLD.owner_id != NEW.owner_id
        OR (OLD.status = 'done') != (NEW.status = 'done')
        OR (OLD.status = 'failed') != (NEW.status = 'failed')
        OR OLD.is_favorite != NEW.is_favorite
    )
    EXECUTE FUNCTION gallery_count_generation()
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
    "DROP TRIGGER IF EXISTS gallery_counts_update ON gallery_generation",
    "DROP TRIGGER IF EXISTS gallery_counts_insert_delete ON gallery_generation",
    "DROP FUNCTION IF EXISTS gallery_count_generation()",
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
