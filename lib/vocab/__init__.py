"""Stages 01-02: SentencePiece training, the vocabulary merge, resizing and initialising the new
embedding rows, and 02's oracle controls. May import: data, modeling, core."""
