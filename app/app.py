"""Entry point for hosting the vargen app (e.g. a Hugging Face Space): the same as ``vargen app``.

    python app/app.py --port 8000
"""
import sys

from vargen.cli import main

if __name__ == "__main__":
    sys.exit(main(["app", *sys.argv[1:]]))
