"""Data stage: raw loaders, preprocessing, leave-one-out split, synthetic generator."""
