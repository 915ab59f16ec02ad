"""Sample data for ``datasources demo`` (what ``make run`` shows)."""
