"""The base layer: paths, parameters (profiles and a stage's lifecycle), atomic outputs, line and
JSONL readers, hashing, bootstrap intervals, markdown tables, plots. Imports no other lib package."""
