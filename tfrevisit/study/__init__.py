"""The paper's study at small scale: a grid of (task x architecture x width x
seed) cells, each trained, exported and evaluated by the command lines
(`python -m tfrevisit.study`), and a report built from the cells' results
(`python -m tfrevisit.study.report`)."""
