"""`python -m rayrejuv <command> ...`: the same CLI as the `rayrejuv` script (e.g. as a Ray Job entry point)."""

from rayrejuv.cli import main

if __name__ == "__main__":
    main()
