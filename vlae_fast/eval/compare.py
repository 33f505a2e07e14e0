"""`vlae compare`: several runs' reports side by side, one column per run, the claim verdicts as rows."""
from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from ..errors import ConfigError
from .report import load_report, markdown_table


def load_any(path: str | Path, **eval_options) -> dict:
    """A report from a JSON file written by `vlae eval --out`, or built from a checkpoint (or run folder):
    the compact part its run stored, whatever its settings, else computed; eval_options as evaluate_checkpoint takes them."""
    path = Path(path)
    if path.suffix == ".json":
        return load_report(path)
    if path.is_dir():
        path = path / "ckpt.safetensors"
    from .run import evaluate_checkpoint

    return evaluate_checkpoint(path, stored_any=True, **eval_options)[0]


def run_name(report: dict) -> str:
    """A column title: the run folder of the checkpoint (runs/NAME/ckpt.safetensors -> NAME)."""
    p = Path(report["checkpoint"]["path"])
    return p.parent.name or p.stem


def _f(v, spec: str = ".2f") -> str:
    return "—" if v is None else format(v, spec)


def rows(reports: list[dict]) -> tuple[list[str], list[list[str]]]:
    """The comparison table: header (one column per report) and rows (figure name, then one cell per run)."""
    if not reports:
        raise ConfigError("give at least one report (.json from `vlae eval --out`) or checkpoint to compare")
    head = ["", *[run_name(r) for r in reports]]
    L = max(len(r["levels"]) for r in reports)

    def row(name: str, cell) -> list[str]:
        return [name, *[cell(r) for r in reports]]

    def level(r: dict, l: int, key: str, spec: str) -> str:
        return _f(r["levels"][l][key], spec) if l < len(r["levels"]) else ""

    def factor(r: dict, name: str) -> str:
        f = (r.get("factors") or {}).get(name)
        return " / ".join(f"{s:.2f}" for s in f) if f else "—"

    out = [row("model", lambda r: f"{r['model']} ({r['control']}_l), {'x'.join(map(str, r['latent_dims']))}"),
           row("data set, split", lambda r: f"{r['dataset']}, {r['split']} ({r['images']})"),
           row("step", lambda r: str(r["checkpoint"]["step"])),
           row("ELBO, nats (pixels as stored)", lambda r: _f(r["elbo"])),
           row("-log r(x|z)", lambda r: _f(r["recon"])),
           row("discrete-image ELBO, nats", lambda r: _f((r.get("discrete") or {}).get("elbo"))),
           row("IW bound, nats", lambda r: f"{r['iw']['bound']:.2f} (K={r['iw']['k']})" if r.get("iw") else "—"),
           row("bits/dim", lambda r: _f(r["bits_per_dim"], ".4f"))]
    for key, title, spec in (("kl", "KL", ".2f"), ("active_units", "active units", "d"),
                             ("knn_acc", "kNN acc", ".3f"), ("logreg_acc", "logreg acc", ".3f"),
                             ("variation_share", "pixel-variance share", ".2f")):
        out += [row(f"level {l + 1} {title}", lambda r, l=l: level(r, l, key, spec)) for l in range(L)]
    out += [row("all levels kNN / logreg acc",
                lambda r: f"{_f(r['all_levels']['knn_acc'], '.3f')} / {_f(r['all_levels']['logreg_acc'], '.3f')}")]
    out += [row(f"{name} shares, level 1 / ... / L", lambda r, n=name: factor(r, n)) for name in ("ink", "width", "slant", "class")]
    out += [row("Figure 2 Gibbs / ancestral confidence",
                lambda r: f"{r['gibbs']['gibbs']['confidence']:.3f} / {r['gibbs']['ancestral']['confidence']:.3f}"
                if r.get("gibbs") else "—")]
    claims: list[str] = []
    for r in reports:
        claims += [c["claim"] for c in r["claims"] if c["claim"] not in claims]
    for text in claims:
        def verdict(r: dict, text=text) -> str:
            hit = [c for c in r["claims"] if c["claim"] == text]
            return ("holds" if hit[0]["holds"] else "does not hold") if hit else "—"
        out.append(row(f"claim: {text}", verdict))
    return head, out


def print_table(reports: list[dict], console: Console) -> None:
    head, body = rows(reports)
    table = Table(title="vlae compare")
    for i, h in enumerate(head):
        table.add_column(h, justify="left" if i == 0 else "right")
    for r in body:
        table.add_row(*r)
    console.print(table)


def markdown(reports: list[dict], command: str | None = None) -> str:
    """The comparison as a markdown document: the table, then each run's checkpoint path."""
    parts = ["# `vlae compare`", markdown_table(*rows(reports))]
    parts.append("\n".join(f"- {run_name(r)}: `{r['checkpoint']['path']}` (step {r['checkpoint']['step']}, "
                           f"{r['compact_source']})" for r in reports))
    if command:
        parts.append(f"Made with:\n\n```bash\n{command}\n```")
    return "\n\n".join(parts) + "\n"


def write_markdown(reports: list[dict], path: str | Path, command: str | None = None) -> Path:
    path = Path(path)
    path.write_text(markdown(reports, command))
    return path
