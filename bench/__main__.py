"""``make bench``: run every benchmark and rewrite docs/performance.md."""

from __future__ import annotations

from bench import foundation

if __name__ == "__main__":
    foundation.main()
