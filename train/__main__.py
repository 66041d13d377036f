"""``python -m spikegpt.train`` / ``accelerate launch -m spikegpt.train``: the ``spikegpt train`` command."""

import sys

from spikegpt.cli import main

sys.exit(main(["train", *sys.argv[1:]]))
