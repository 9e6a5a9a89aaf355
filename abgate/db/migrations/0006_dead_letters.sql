-- Log rows PostgreSQL refused for what they hold (a value the column cannot store, a constraint
-- they break), kept instead of blocking the rows around them.
--
-- When a flush or a spool replay fails with a data or integrity error, the gateway's log writer
-- splits the batch until the rows that fail on their own are found, writes every other row, and
-- puts each refused one here with the reason. Nothing is lost: `content` is the whole row, to
-- fix and re-insert by hand. A row this table refuses too goes to `dead-letters.jsonl` in the
-- gateway's spool directory instead.
CREATE TABLE dead_letters (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    log_table   text        NOT NULL,             -- 'predictions' or 'outcomes'
    -- The row as a JSON object, column name -> value, as the gateway queued it: `ts` as float
    -- seconds since the Unix epoch, bytes (prediction scores, little-endian float32) as
    -- {"b64": "..."}. `json`, not `jsonb`: only `json` keeps a \u0000 escape (a NUL in the row
    -- may be why it was refused), and the text is pure ASCII.
    content     json        NOT NULL,
    sqlstate    text        NOT NULL DEFAULT '',  -- '' when the gateway could not encode the row
    error       text        NOT NULL,             -- the exception class, e.g. CheckViolationError
    message     text        NOT NULL,
    detail      text        NOT NULL DEFAULT '',
    gateway_id  text        NOT NULL DEFAULT '',
    failed_at   timestamptz NOT NULL DEFAULT now()
);

-- A batch isolated twice (its flush lost the connection half way, a spool segment replayed
-- again after a crash) records each of its rows once.
CREATE UNIQUE INDEX dead_letters_content ON dead_letters (log_table, md5(content::text));
CREATE INDEX dead_letters_failed_at ON dead_letters (failed_at);
