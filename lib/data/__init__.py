"""Training data: corpora (files, JSONL, Hub splits) and their packing into blocks, instruction
records and chat templates, DPO preference pairs, word pairs and code-switching.
May import: modeling, core."""
