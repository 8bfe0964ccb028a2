"""Stage 1: clips and game episodes in, streaming webdataset shards out. Imports no model."""
