"""`python selftrain.py [options]` is `viprog selftrain [options]`: reinforced self-training.

With no options it runs the embedded default: the generated shapes world, the packaged
Qwen2.5-Coder-0.5B policy on this CPU, two frugal rounds.
"""

import sys

from viprog.cli import main

if __name__ == "__main__":
    sys.exit(main(["selftrain", *sys.argv[1:]], prog="selftrain.py"))
