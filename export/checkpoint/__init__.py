"""A checkpoint: its files read in the formats people have (formats), then checked and rebuilt as the HF model
(rebuild)."""
