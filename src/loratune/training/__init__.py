"""Training: the recipe (the stages of one run, in order), the loop, checkpoints, and training several methods
for a comparison."""
