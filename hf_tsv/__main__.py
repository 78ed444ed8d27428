"""``python -m hf_tsv …`` runs the ``hf-tsv`` program, which is how ``torchrun`` starts a sharded merge:
``torchrun --nproc-per-node 2 -m hf_tsv merge BASE FT1 FT2 -o merged`` (see docs/distributed.md)."""

from .cli import run_as_program

if __name__ == "__main__":
    run_as_program()
