"""How a run trains: augmentation, batch mixing, EMA, optimizers and schedules, parameter groups.

Each choice is one entry of a plain dict in its module (augment.POLICIES, mix.MIXES, optim.OPTIMIZERS,
optim.SCHEDULES). The named recipes that fill these options in are config values: distrib/config/recipes.py.
"""
