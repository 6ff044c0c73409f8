"""Stream a continuation of a prompt from a saved ssmlm model; see `python generate.py --help`."""
from ssmlm.generation_cli import main

if __name__ == "__main__":
    raise SystemExit(main())
