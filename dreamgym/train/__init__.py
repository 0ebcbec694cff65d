"""The training pipeline: collect, fit V, encode, fit M, evolve C, evaluate, export."""
