"""Classic (non-meta-learned) baselines of the RL² paper's tables, batched over problem instances.

- :mod:`metarl.baselines.bandits`: random, greedy, ε-greedy, UCB1, Thompson sampling, optimistic Thompson
  sampling and the Gittins index on Bernoulli bandits with a Beta(1, 1) prior (RL² Table 1).
- :mod:`metarl.baselines.mdps`: random, greedy and ε-greedy on the posterior-mean model, and PSRL on random
  tabular MDPs (RL² Table 2).

Each runs ``B`` instances at once in numpy from one seeded ``np.random.Generator`` and returns the total
reward of every instance's trial; ``experiments/rl2_baselines.py`` prints the tables with 95% intervals.
"""
