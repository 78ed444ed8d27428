"""Local `evaluate` modules shipped with hf_tsv (``evaluate.load`` of a Hub name would need the network)."""
