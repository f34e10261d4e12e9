"""Direct Preference Optimization: the loss (loss.py), pair scoring (scoring.py) and the training
objective (objective.py). Import the module you need: nothing is re-exported here, so code that
scores pairs does not import the loss, and an edit to the loss changes only the keys of stages that use it."""
