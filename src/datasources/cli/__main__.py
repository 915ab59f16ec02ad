"""``python -m datasources.cli``: the ``datasources`` command."""

from datasources.cli import main

if __name__ == "__main__":  # importing this module (as tests do) runs nothing
    main()
