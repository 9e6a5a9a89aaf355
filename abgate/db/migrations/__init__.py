"""Plain SQL migrations, applied in file-name order by abgate.db.migrate."""
