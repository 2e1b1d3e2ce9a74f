"""`python -m rayrejuv.cli <command> ...`: the same CLI as the `rayrejuv` script."""

from rayrejuv.cli import main

if __name__ == "__main__":
    main()
