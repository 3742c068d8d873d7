"""Stage 07: paired tasks (files, Hub splits, generic shapes), prediction rules and their null
controls, the models a run scores, lm-eval's harness and the context-once scorer, extra tasks,
the contamination scan, and the pairwise LLM judge. May import: world, data, modeling, core."""
