"""``python -m hf_tsv …`` runs the ``hf-tsv`` command, which is how ``torchrun`` starts a sharded merge:
``torchrun --nproc-per-node 2 -m hf_tsv merge BASE FT1 FT2 -o merged`` (see docs/distributed.md)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
