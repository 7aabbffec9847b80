"""How a run trains: augmentation, batch mixing, EMA, optimizers and schedules, named recipes.

Each choice is one entry of a plain dict in its module (augment.POLICIES, mix.MIXES, optim.OPTIMIZERS,
optim.SCHEDULES, recipes.RECIPES). recipes.py is torch-free: the launcher reads it.
"""
