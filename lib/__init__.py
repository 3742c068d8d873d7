"""Korean-English integration toolkit for Llama models, in layers (each package may import only
the packages below it; ``tests/test_layout.py`` asserts it, function-local imports counted):

    cli        entry points: python -m lib.pipeline, -m lib.train, -m lib.cli.<tool>   (nothing imports it)
    run        orchestration: the runner, check, plan, grids, reports, Colab notebooks
    analysis   08: agreement, paired tables, transfer, representations' figures
    eval       07: paired tasks, prediction rules, null controls, the lm-eval harness, contamination, judge
    train      03-06: the loop and the training stages          world   00: the toy world and its base model
    vocab      01-02: tokenizer merge, embedding init, oracle controls
    data       corpora, packing, instructions, preference pairs, word pairs
    modeling   models, losses, representations, generation
    core       paths, parameters and stage lifecycle, atomic outputs, readers, hashing, statistics, plots
"""
