"""The numbers of Zhmoginov, Sandler & Bashkirova ("Compositional Models: Multi-Task Learning and Knowledge
Transfer with Modular Networks") that our tables and claims are compared against, as printed in its tables
(accuracies in %). Their data are not ours (ImageNet-scale natural images, USPS, DomainNet, Office-Caltech10),
so every number is shown with the paper's dataset and table beside it, and claims use the paper's *effects*
(differences between its own columns), never its absolute accuracies.
"""
from __future__ import annotations

# Table 2: transfer from a template model pretrained on IMAGENET, CIFAR-100, PLACES365, SUN397, FOOD101 to new
# datasets; "Baseline" = plain multi-task net (shared backbone, per-task BN + logits) whose new task tunes BN +
# logits; the other columns start the new task's Xi from that source's Xi (then tune Xi, BN and logits).
TABLE2 = {
    "AIRCRAFT": dict(baseline=43.3, imagenet=43.9, cifar=42.6, food=39.4),
    "CARS": dict(baseline=49.2, imagenet=51.0, cifar=46.7, food=42.2),
    "EMNIST": dict(baseline=85.5, imagenet=85.0, cifar=85.2, food=83.6),
    "STANFORD DOGS": dict(baseline=55.6, imagenet=57.6, cifar=42.4, food=36.5),
}

# Table 3 (Digits column: MNIST, C-MNIST shear/scale/shot noise, SVHN -> USPS): unsupervised adaptation.
# "(IA)" rows tune only a plain isometric net's input adapter; "Comp." rows tune only the target's Xi.
TABLE3_DIGITS = dict(source_only=95.75, comp_source_only=96.05, adversarial_ia=98.12, comp_adversarial=98.33,
                     moment_matching_ia=96.93, comp_moment_matching=96.85, comp_supervised=98.25)
TABLE3_OFFICE = dict(source_only=42.96, comp_source_only=41.89, adversarial_ia=57.79, comp_adversarial=48.18,
                     moment_matching_ia=51.39, comp_moment_matching=52.76, comp_supervised=53.57)
TABLE3_DOMAINNET = dict(source_only=24.75, comp_source_only=11.61, adversarial_ia=27.54, comp_adversarial=14.40,
                        moment_matching_ia=26.12, comp_moment_matching=14.22, comp_supervised=15.46)

# Table 9, Digits part (MNIST, C-MNIST, SVHN -> USPS). The paper labels both rows "Digits ft."; its caption says
# the first part gives the initial accuracy and the accuracy after fine-tuning, so the first row is read as
# the initial one. S/O = Xi copied from the best single source.
TABLE9_DIGITS_INIT = dict(random=93.76, accuracy_interp=95.50, learned_interp=95.95, source=95.81)
TABLE9_DIGITS_FT = dict(random=96.05, accuracy_interp=96.37, learned_interp=96.61)

# Table 12: supervised multi-domain training on digit domains (compositional = separate Xi per domain).
TABLE12 = {
    "MNIST": dict(isometric=99.14, compositional=99.29),
    "C-MNIST (shot noise)": dict(isometric=97.63, compositional=98.28),
    "C-MNIST (shear)": dict(isometric=98.79, compositional=98.58),
    "C-MNIST (scale)": dict(isometric=98.18, compositional=98.79),
    "SVHN": dict(isometric=54.73, compositional=89.16),
}


# Table 5: single-task CIFAR-100 validation accuracy by signature, keyed by (K templates, L layers); the paper
# reports a standard deviation of about 0.5 between repeats (App. B.1). "mixture" = learned mixture weights.
TABLE5 = {
    (2, 4): dict(cyclic=60.6, sequential=61.0, random=60.5, mixture=61.1),
    (2, 8): dict(cyclic=61.6, sequential=63.2, random=61.7, mixture=62.5),
    (2, 16): dict(cyclic=62.4, sequential=64.1, random=64.1, mixture=63.4),
    (2, 32): dict(cyclic=63.7, sequential=65.2, random=64.2, mixture=64.9),
    (4, 8): dict(cyclic=64.0, sequential=65.1, random=65.5, mixture=64.1),
    (4, 16): dict(cyclic=63.3, sequential=66.7, random=65.1, mixture=66.4),
    (4, 32): dict(cyclic=64.9, sequential=65.5, random=63.7, mixture=66.2),
    (8, 16): dict(cyclic=65.3, sequential=67.3, random=66.5, mixture=67.0),
    (8, 32): dict(cyclic=66.2, sequential=67.4, random=66.6, mixture=66.4),
}
# our signature kinds -> Table 5's columns
TABLE5_KINDS = dict(learned="mixture", sequential="sequential", cyclic="cyclic", random="random")


def table5_row(num_templates: int, depth: int) -> tuple[tuple[int, int], dict]:
    """((K, L), row) of Table 5 for our K templates and L layers: the exact row if the paper has it, else the row
    with the nearest layers-per-template ratio L/K, then the nearest K."""
    if (num_templates, depth) in TABLE5:
        return (num_templates, depth), TABLE5[(num_templates, depth)]
    ratio = depth / num_templates
    key = min(TABLE5, key=lambda kl: (abs(kl[1] / kl[0] - ratio), abs(kl[0] - num_templates), kl))
    return key, TABLE5[key]


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def table2_mean(column: str) -> float:
    """Mean over Table 2's four datasets of one column (in %)."""
    return mean(row[column] for row in TABLE2.values())


def table2_effect(a: str, b: str) -> float:
    """Mean over Table 2's four datasets of column a - column b, in points."""
    return mean(row[a] - row[b] for row in TABLE2.values())


# The effects the claims are sized against (points; a claim_effect takes them / 100).
EFFECTS = dict(
    # Table 2: best source's Xi (IMAGENET column) minus baseline, mean of +0.6, +1.8, -0.5, +2.0
    best_source_over_baseline=table2_effect("imagenet", "baseline"),
    # Table 2: baseline minus the worst source's Xi (FOOD column), mean of 3.9, 7.0, 1.9, 19.1
    baseline_over_worst_source=table2_effect("baseline", "food"),
    # Table 9, Digits after fine-tuning: interpolated init minus random init
    accuracy_interp_over_random=TABLE9_DIGITS_FT["accuracy_interp"] - TABLE9_DIGITS_FT["random"],
    learned_interp_over_random=TABLE9_DIGITS_FT["learned_interp"] - TABLE9_DIGITS_FT["random"],
    # Table 3, Digits: Comp. adversarial / moment matching / supervised minus Comp. source-only
    adversarial_gain=TABLE3_DIGITS["comp_adversarial"] - TABLE3_DIGITS["comp_source_only"],
    moment_matching_gain=TABLE3_DIGITS["comp_moment_matching"] - TABLE3_DIGITS["comp_source_only"],
    supervised_gain=TABLE3_DIGITS["comp_supervised"] - TABLE3_DIGITS["comp_source_only"],
)


def cell(value: float, where: str) -> str:
    """A paper cell: its number with the paper's dataset/setting and table."""
    return f"{value:.2f} ({where})" if round(value, 1) != value else f"{value:.1f} ({where})"
