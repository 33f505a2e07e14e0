"""Named training recipes: the `vlae train` defaults a recipe sets, below any option given explicitly.

paper:      the paper's plain recipe: every level trains from step 0, the KL weight rises linearly over half
            the run, levels joined by concatenation (eq. 11), 2-d codes, the Gaussian likelihood.
hierarchy:  (ladder models) progressive training (pro-VLAE, schedule.py): the top level alone first, then each
            lower level faded in, with the authors' gated-add join, its gate starting at 0.3, (three-level MLP
            ladders) level 2's KL held at 6 nats (kl_control.py), and (the MNIST MLP ladder, grey images) the top's
            first stage scored on x with its style made common (--first-target normalize, normalize.py). Chosen
            from the runs in docs/hierarchy.md.
figure3:    (the Markov HVAE and its relatives, hvae / lvae / ar_hvae) the baseline of Figures 2-3: 10-d codes, a
            Bernoulli likelihood and level l's KL term weighted 2^(L-l) (4, 2, 1 for three levels), which sends
            the information up the chain. Chosen from the runs in docs/gibbs.md.
"""
from __future__ import annotations

from typing import Callable

from .errors import ConfigError


def halving(layers: int, **_) -> tuple[float, ...]:
    """KL factors 2^(L-l) for levels l = 1 .. L, bottom first: (4, 2, 1) for three levels."""
    return tuple(float(2 ** (layers - 1 - l)) for l in range(layers))


def middle_target(layers: int, **_) -> tuple[float, ...] | None:
    """A KL target of 6 nats on level 2 of a three-level ladder, no target on the others: (0, 6, 0). Measured on
    MNIST's three levels of 2-d codes only, so other depths get no target."""
    return (0.0, 6.0, 0.0) if layers == 3 else None


def warmup_share(share: float) -> Callable[..., float]:
    """A KL warm-up over `share` of the run's steps."""
    return lambda steps, **_: share * steps


RECIPES: dict[str, dict] = {
    "paper": {},
    # stages of steps / L, fades of a quarter stage, KL time constant steps / 6 (TrainConfig's defaults for
    # progressive and exp): 6000 steps = the top level alone for 2000, then level 2 over 500, level 1 at 4000
    # the gated join's gate starts at 0.3, not the authors' 0.1: 12 claims over seeds 0-2 against 0.1's 10; level
    # 2 held at 6 nats (it takes 4.2-4.6 by itself): 15 claims over seeds 0-3 against the gate alone's 14; the top's
    # first stage scored on x with slant, width and stroke width made common (normalize.py; grey images): 20 of 20 claims
    # over seeds 0-3 against 15 without it (docs/hierarchy.md, rows nrm-s*)
    "hierarchy": {"schedule": "progressive", "pre_kl": 0.5, "kl_anneal": "exp", "join": "gated_add", "gate_init": 0.3,
                  "hidden": 512, "steps": 6000, "kl_target": middle_target, "first_target": "normalize"},
    # functions of the run's levels and steps, resolved once those are known (rundir.plan_run): 5000 steps = the
    # KL weight rising to 1 over the first 1500
    "figure3": {"latent_dims": [10], "likelihood": "bernoulli", "kl_scale": halving, "warmup": warmup_share(0.3),
                "steps": 5000},
}
FAMILY: dict[str, str] = {"hierarchy": "ladder", "figure3": "hvae"}  # the models a recipe is for; paper: any
DEFAULT_RECIPE: dict[tuple[str, str], str] = {("mnist", "ladder"): "hierarchy", ("mnist", "hvae"): "figure3"}
FAMILY_MODELS = {"ladder": "vlae, conv_vlae", "hvae": "hvae, lvae, ar_hvae"}


def recipe_options(dataset: str, recipe: str | None, family: str) -> tuple[str, dict]:
    """(name, options) of the recipe a run uses: `recipe` if given, else the data set's default for the model's
    family ("ladder": vlae, conv_vlae; "hvae": hvae, lvae, ar_hvae), else paper. A recipe for another family
    is refused. Options may be functions of the run's levels and steps: see resolve()."""
    name = recipe or DEFAULT_RECIPE.get((dataset, family), "paper")
    if FAMILY.get(name, family) != family:
        raise ConfigError(f"--recipe {name} is for the {FAMILY_MODELS[FAMILY[name]]} models; this run's model is "
                          f"not one of them: choose --recipe paper or another model")
    return name, dict(RECIPES[name])


def resolve(value: object | Callable[..., object], layers: int, steps: int) -> object:
    """A recipe option's value for a run of `steps` steps of a model with `layers` levels."""
    return value(layers=layers, steps=steps) if callable(value) else value
