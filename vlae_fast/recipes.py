"""Named training recipes: the `vlae train` defaults a recipe sets, below any option given explicitly.

paper:      the paper's plain recipe: every level trains from step 0, the KL weight rises linearly over half
            the run, levels joined by concatenation (eq. 11).
hierarchy:  progressive training (pro-VLAE, schedule.py): the top level alone first, then each lower level
            faded in, with the authors' gated-add join. Chosen from the runs in docs/hierarchy.md.
"""
from __future__ import annotations

RECIPES: dict[str, dict] = {
    "paper": {},
    # stages of steps / L, fades of a quarter stage, KL time constant steps / 6 (TrainConfig's defaults for
    # progressive and exp): 6000 steps = the top level alone for 2000, then level 2 over 500, level 1 at 4000
    "hierarchy": {"schedule": "progressive", "pre_kl": 0.5, "kl_anneal": "exp", "join": "gated_add", "hidden": 512,
                  "steps": 6000},
}
DEFAULT_RECIPE: dict[str, str] = {"mnist": "hierarchy"}  # data set -> its default recipe; others: paper


def recipe_options(dataset: str, recipe: str | None, ladder: bool) -> tuple[str, dict]:
    """(name, options) of the recipe a run uses: `recipe` if given, else the data set's default for a ladder
    model (vlae, conv_vlae) and paper for the others (hvae, lvae, ar_hvae: nothing to fade in, and their
    defaults, e.g. vlae gibbs' HVAE run, stay the paper's)."""
    name = recipe or (DEFAULT_RECIPE.get(dataset, "paper") if ladder else "paper")
    return name, dict(RECIPES[name])
