"""The report of `vlae eval`: its versioned JSON format (docs/eval.md), the claim verdicts, the rich table
on the terminal and the markdown report."""
from __future__ import annotations

import json
from pathlib import Path

from rich import box
from rich.console import Console
from rich.table import Table

from ..errors import ConfigError
from ..images import check_writable
from .likelihood import DESCRIBE, bits_per_dim

FORMAT = "vlae-fast-eval/1"  # the JSON report; bump when a field changes meaning or goes away
COMPACT_FORMAT = "vlae-fast-eval-compact/1"  # the part `vlae train` stores in the checkpoint metadata


SHARE_MARGIN = 0.05  # a level "produces the most" of a factor when its share beats every other's by this (grid error ~0.01)
ACC_MARGIN = 0.01  # a level "predicts best" when its probe accuracy beats every other's by this (10k images: s.e. ~0.005)


def _leader(v: list[float], margin: float) -> int | None:
    """The index whose value beats every other by at least `margin`; None when no one does (or all are 0)."""
    best = max(range(len(v)), key=lambda i: v[i])
    others = [x for i, x in enumerate(v) if i != best]
    return best if v[best] > 0 and all(v[best] - x >= margin for x in others) else None


def _leader_of(v: list[float], group: range, margin: float) -> bool:
    """True when the best of `group` beats every value outside it by at least `margin`."""
    inside, outside = max(v[i] for i in group), [x for i, x in enumerate(v) if i not in group]
    return inside > 0 and all(inside - x >= margin for x in outside)


def _fmt_shares(v: list[float]) -> str:
    return " / ".join(f"{s:.2f}" for s in v)


def claims(levels: list[dict], factors: dict | None) -> list[dict]:
    """Figure 5's claims (bottom = stroke width, middle = width and slant, top = identity) and the label
    probes' version of "higher levels are more abstract", each {'claim', 'holds', 'evidence'}. A claim holds
    when the named level leads every other by SHARE_MARGIN (accuracy: ACC_MARGIN); a claim whose numbers
    are missing (no factors, no classifier, no labels, too few levels) is left out."""
    L, out = len(levels), []
    if factors and L >= 2:
        ink = factors["ink"]
        out.append({"claim": "level 1 (bottom) produces the most stroke-width (ink mass) variation",
                    "holds": _leader(ink, SHARE_MARGIN) == 0, "evidence": f"ink shares {_fmt_shares(ink)}"})
        if L >= 3:
            w, s = factors["width"], factors["slant"]
            middle = "level 2 (middle)" if L == 3 else f"a middle level (2..{L - 1})"
            out.append({"claim": f"{middle} produces the most width and the most slant variation",
                        "holds": all(_leader_of(v, range(1, L - 1), SHARE_MARGIN) for v in (w, s)),
                        "evidence": f"width shares {_fmt_shares(w)}; slant shares {_fmt_shares(s)}"})
        if factors.get("class"):
            c = factors["class"]
            out.append({"claim": f"level {L} (top) produces the most digit-identity (class) variation",
                        "holds": _leader(c, SHARE_MARGIN) == L - 1, "evidence": f"class shares {_fmt_shares(c)}"})
    acc = [lv["logreg_acc"] for lv in levels]
    if L >= 2 and all(a is not None for a in acc):
        out.append({"claim": f"level {L} (top) predicts the label best (logistic probe)",
                    "holds": _leader(acc, ACC_MARGIN) == L - 1, "evidence": "logistic-probe accuracy " + " / ".join(f"{a:.3f}" for a in acc)})
    return out


def assemble(meta: dict, compact: dict, *, iw: dict | None = None, factors: dict | None = None,
             gibbs: dict | None = None, notes: list[str] = ()) -> dict:
    """The JSON report from the model's description (meta), the compact part and the optional sections."""
    lik, probes = compact["likelihood"], compact["probes"]
    dims = meta["image_dims"]
    best = iw["bound"] if iw and iw.get("discrete") else lik.get("discrete_elbo")
    levels = [{"level": l, "dims": d, "kl": lik["kl"][l - 1], "active_units": compact["active_units"][l - 1],
               "knn_acc": probes["levels"][l - 1]["knn"] if probes else None,
               "logreg_acc": probes["levels"][l - 1]["logreg"] if probes else None,
               "variation_share": compact["variation_shares"][l - 1]}
              for l, d in enumerate(meta["latent_dims"], 1)]
    report = {
        "format": FORMAT, **{k: meta[k] for k in ("model", "dataset", "control", "latent_dims", "output", "checkpoint")},
        "split": compact["split"], "images": compact["images"], "seed": compact["seed"],
        "elbo": lik["elbo"], "recon": lik["recon_nll"], "mse": lik["mse"],
        "discrete": None if lik.get("discrete") is None else {"elbo": lik["discrete_elbo"], "input": lik["discrete"]},
        "iw": iw, "bits_per_dim": bits_per_dim(best, dims),
        "bits_per_dim_from": None if best is None else ("iw" if iw and iw.get("discrete") else "elbo"),
        "levels": levels,
        "all_levels": {"active_units": sum(compact["active_units"]),
                       "knn_acc": probes["all"]["knn"] if probes else None,
                       "logreg_acc": probes["all"]["logreg"] if probes else None},
        "probes": None if not probes else {k: probes[k] for k in ("chance", "fit_images", "score_images")},
        "factors": factors, "gibbs": gibbs,
        "claims": claims(levels, factors),
        "notes": list(compact.get("notes", [])) + list(notes),
        "compact_source": compact.get("source", "computed"),
    }
    return report


def load_report(path: str | Path) -> dict:
    """A JSON report written by `vlae eval --out`; ConfigError if it is not one this version reads."""
    try:
        report = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not a readable JSON report ({e}); write one with `vlae eval CKPT --out report.json`") from None
    fmt = report.get("format") if isinstance(report, dict) else None
    if fmt != FORMAT:
        raise ConfigError(f"{path}: report format {fmt!r}, this version reads {FORMAT!r}; "
                          "run `vlae eval` on its checkpoint again")
    return report


def check_output(path: str | Path | None, suffix: str, option: str) -> None:
    """Fail before any work if an output file has the wrong suffix or its folder is missing or read-only
    (images.check_writable, the one such check); None = no such output asked for."""
    if path is not None:
        check_writable(path, (suffix,), option)


def write_json(report: dict, path: str | Path) -> Path:
    path = Path(path)
    path.write_text(json.dumps(report, indent=1) + "\n")
    return path


# --- rendering --------------------------------------------------------------------------------
def _f(v, spec: str = ".2f") -> str:
    return "—" if v is None else format(v, spec)


def headline(r: dict) -> list[str]:
    """The likelihood lines, as the terminal and the markdown report show them."""
    kl = ", ".join(f"{lv['kl']:.2f}" for lv in r["levels"])
    lines = [f"{r['split']} ELBO {r['elbo']:.2f} nats/image on pixels as stored (-log r(x|z) {r['recon']:.2f}, "
             f"KL per level [{kl}]; {r['images']} images)"]
    if r["discrete"]:
        lines.append(f"discrete-image bound (ELBO) {r['discrete']['elbo']:.2f} nats/image ({DESCRIBE[r['discrete']['input']]})")
    if r["iw"]:
        iw = r["iw"]
        lines.append(f"IW bound K={iw['k']}: {iw['bound']:.2f} nats/image (ELBO of the same samples {iw['elbo']:.2f}; "
                     f"{iw['images']} images{', discrete image' if iw['discrete'] else ''})")
    if r["bits_per_dim"] is not None:
        lines.append(f"{r['bits_per_dim']:.4f} bits/dim (from the {r['bits_per_dim_from']} bound on the discrete image)")
    return lines


def level_rows(r: dict) -> tuple[list[str], list[list[str]]]:
    """The per-level table: header and rows (bottom level first, then all levels together)."""
    head = ["level", "dims", "KL", "active units", "kNN acc", "logreg acc", "pixel-variance share"]
    rows = [[str(lv["level"]), str(lv["dims"]), f"{lv['kl']:.2f}", str(lv["active_units"]), _f(lv["knn_acc"], ".3f"),
             _f(lv["logreg_acc"], ".3f"), f"{lv['variation_share']:.2f}"] for lv in r["levels"]]
    a = r["all_levels"]
    rows.append(["all", str(sum(lv["dims"] for lv in r["levels"])), f"{sum(lv['kl'] for lv in r['levels']):.2f}",
                 str(a["active_units"]), _f(a["knn_acc"], ".3f"), _f(a["logreg_acc"], ".3f"), "1.00"])
    return head, rows


def factor_rows(r: dict) -> tuple[list[str], list[list[str]]] | None:
    """The image-factor table: for each level, its share of each factor's variation (None without factors)."""
    f = r["factors"]
    if not f:
        return None
    head = ["level", "ink (stroke width)", "width", "slant", "class"]
    return head, [[str(lv["level"]), *[_f(f[k][i]) if f.get(k) else "—" for k in ("ink", "width", "slant", "class")]]
                  for i, lv in enumerate(r["levels"])]


def claim_lines(r: dict) -> list[str]:
    return [f"{'holds' if c['holds'] else 'does not hold'}: {c['claim']} ({c['evidence']})" for c in r["claims"]]


def _table(head: list[str], rows: list[list[str]], title: str) -> Table:
    table = Table(title=title, box=box.SIMPLE_HEAD)
    for h in head:
        table.add_column(h, justify="right")
    for row in rows:
        table.add_row(*row)
    return table


def print_report(r: dict, console: Console) -> None:
    console.print(f"[bold]{r['checkpoint']['path']}[/]: {len(r['levels'])}-level {r['model']} on {r['dataset']}, "
                  f"step {r['checkpoint']['step']}", highlight=False)
    for line in headline(r):
        console.print(line, highlight=False)
    console.print(_table(*level_rows(r), f"per level (share: of the generated-pixel variance redrawing {r['control']}_l produces)"))
    if r["factors"]:
        console.print(_table(*factor_rows(r), f"share of each image factor's variation per level ({r['control']}_l redrawn)"))
    if r["probes"]:
        p = r["probes"]
        console.print(f"probes: fitted on {p['fit_images']} training images, scored on {p['score_images']}; "
                      f"chance (commonest label) {p['chance']:.3f}", highlight=False)
    if r["gibbs"]:
        g = r["gibbs"]
        for name in ("gibbs", "ancestral"):
            s = g.get(name) or {}
            console.print(f"Figure 2, {name}: confidence {_f(s.get('confidence'), '.3f')}, class entropy "
                          f"{_f(s.get('class_entropy'))} of {_f(s.get('max_entropy'))} nats "
                          f"({g['chains']} chains, {g['steps']} steps)", highlight=False)
    for line in claim_lines(r):
        style = "green" if line.startswith("holds") else "red"
        console.print(f"[{style}]{line}[/]", highlight=False)
    for note in r["notes"]:
        console.print(f"[dim]note: {note}[/]", highlight=False)


def markdown_table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join("---" for _ in head) + " |"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def markdown(r: dict, pictures: list[str] = ()) -> str:
    """The markdown report; pictures: the traversal PNGs' paths relative to the report, bottom level first."""
    parts = [f"# `vlae eval` {r['checkpoint']['path']}",
             f"{len(r['levels'])}-level {r['model']} on {r['dataset']} ({r['split']} split), step {r['checkpoint']['step']}.",
             "\n".join(f"- {line}" for line in headline(r)),
             markdown_table(*level_rows(r))]
    if r["factors"]:
        parts.append(markdown_table(*factor_rows(r)))
    parts.append("Shares: the part of the generated-pixel variance (and of each image factor's variation) that "
                 f"redrawing one level's {r['control']}_l alone produces, the others fixed (docs/eval.md).")
    if r["claims"]:
        parts.append("## Claims\n\n" + "\n".join(f"- {line}" for line in claim_lines(r)))
    if pictures:
        parts.append("## Traversals\n\n" + markdown_table([f"level {l}" for l in range(1, len(pictures) + 1)],
                                                          [[f"![]({p})" for p in pictures]]))
    if r["notes"]:
        parts.append("## Notes\n\n" + "\n".join(f"- {n}" for n in r["notes"]))
    return "\n\n".join(parts) + "\n"
