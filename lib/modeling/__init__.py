"""Model code that belongs to no stage: loading and saving (device, precision), losses,
sentence/word representations, multiple-choice scoring, generation. May import: core."""
