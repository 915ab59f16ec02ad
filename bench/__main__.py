"""``make bench``: run every benchmark and rewrite docs/performance.md."""

from __future__ import annotations

import os
import sys

from bench import api, azure_blob, foundation, postgres, postgres_export, sandbox

if __name__ == "__main__":
    which = set(sys.argv[1:]) or {
        "foundation",
        "azure_blob",
        "postgres",
        "postgres_export",
        "api",
        "sandbox",
    }
    if "foundation" in which:
        foundation.main()
    if "azure_blob" in which:
        if "DATASOURCES_TEST_AZURITE_CONNECTION_STRING" not in os.environ:
            sys.exit("azure_blob needs Azurite: run it through 'make bench'")
        azure_blob.main()
    if "postgres" in which:
        if "DATASOURCES_TEST_POSTGRES_DSN" not in os.environ:
            sys.exit("postgres needs PostgreSQL: run it through 'make bench'")
        postgres.main()
    if "postgres_export" in which:
        if "DATASOURCES_TEST_POSTGRES_DSN" not in os.environ:
            sys.exit("postgres_export needs PostgreSQL: run it through 'make bench'")
        postgres_export.main()
    if "api" in which:
        api.main()
    if "sandbox" in which:
        sandbox.main()
