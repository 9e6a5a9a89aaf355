"""PostgreSQL: connection targets (any server, or an embedded one) and schema migrations."""
