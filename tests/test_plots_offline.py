"""`dvc plots show` pages render with no network: .dvc/plots/offline.html inlines vega,
vega-lite and vega-embed (see tools/build_offline_plots_template.py), and the ROC template
.dvc/plots/roc.json draws one line per model."""

from __future__ import annotations

import csv
import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tests.conftest import PROJECT, chromium_or_skip, dom_offline, dvc, git

TEMPLATE = PROJECT / ".dvc" / "plots" / "offline.html"
ROC_TEMPLATE = PROJECT / ".dvc" / "plots" / "roc.json"


def test_config_names_the_offline_template():
    from dvc.config import Config

    config = Config(dvc_dir=str(PROJECT / ".dvc"), validate=False).load_one("repo")
    assert config["core"]["analytics"] == "false"
    assert config["core"]["autostage"] == "true"
    # DVC (dvc/commands/plots.py) joins a relative plots.html_template with the .dvc dir.
    assert config["plots"]["html_template"] == "plots/offline.html"
    assert (PROJECT / ".dvc" / config["plots"]["html_template"]) == TEMPLATE

    page = TEMPLATE.read_text(encoding="utf-8")
    assert page.count("{plot_divs}") == 1
    assert page.count("{refresh_tag}") == 1
    assert "{scripts}" not in page  # where DVC would put its CDN <script src> tags
    assert "<script src=" not in page.replace(" ", "")
    assert re.search(r"<script[^>]*\bsrc\s*=", page) is None
    for library in ("vega@5.20.2", "vega-lite@5.2.0", "vega-embed@6.18.2"):
        assert library in page


def test_roc_template_shape():
    spec = json.loads(ROC_TEMPLATE.read_text(encoding="utf-8"))
    assert spec["data"] == {"values": "<DVC_METRIC_DATA>"}
    assert spec["width"] == spec["height"]
    diagonal, curves = spec["layer"]
    assert diagonal["mark"]["strokeDash"] and diagonal["mark"]["color"] == "grey"
    encoding = curves["encoding"]
    assert encoding["x"]["field"] == "<DVC_METRIC_X>" and encoding["y"]["field"] == "<DVC_METRIC_Y>"
    assert encoding["x"]["scale"]["domain"] == [0, 1] == encoding["y"]["scale"]["domain"]
    assert encoding["color"]["field"] == "model"
    assert encoding["strokeDash"]["field"] == "rev"
    # DVC adds no index field when x is given, so the template numbers the rows itself.
    assert encoding["order"]["field"] == curves["transform"][0]["window"][0]["as"]


VOID_ELEMENTS = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class _Charts(HTMLParser):
    """Which vega-embed containers (div ids) hold a drawn <canvas class="marks"> (or svg)."""

    def __init__(self):
        super().__init__()
        self.stack: list[tuple[str, str | None]] = []
        self.rendered: dict[str, bool] = {}
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        chart = attrs.get("id") if tag == "div" and "vega-embed" in (attrs.get("class") or "") else None
        if chart:
            self.rendered[chart] = False
        # An empty spec (DVC writes `var spec = {};` when a plot has no data) gives a 0x0 canvas.
        drawn = all(re.match(r"[1-9]", attrs.get(side) or "0") for side in ("width", "height"))
        if attrs.get("class") == "marks" and tag in {"canvas", "svg"} and drawn:
            for _, open_chart in self.stack:
                if open_chart:
                    self.rendered[open_chart] = True
        if tag not in VOID_ELEMENTS:
            self.stack.append((tag, chart))

    def handle_endtag(self, tag):
        for depth in range(len(self.stack) - 1, -1, -1):
            if self.stack[depth][0] == tag:
                del self.stack[depth:]
                break

    def handle_data(self, data):
        if not self.stack or self.stack[-1][0] not in {"script", "style"}:
            self.text.append(data)


def write_plot_data(repo: Path) -> None:
    (repo / "plots").mkdir()
    with open(repo / "plots/train.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", "loss"])
        writer.writerows([step, round(1.0 / (step + 1), 4)] for step in range(10))
    with open(repo / "plots/confusion.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["actual", "predicted"])
        writer.writerows((a, p) for a in range(3) for p in range(3) for _ in range(4 if a == p else 1))
    with open(repo / "plots/roc.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["model", "fpr", "tpr"])
        writer.writerows(("knn", *point) for point in [(0, 0), (0, 0.5), (0.2, 0.5), (0.2, 0.9), (1, 0.9), (1, 1)])
        writer.writerows(("cnn", *point) for point in [(0, 0), (0, 0.8), (0.1, 0.8), (0.1, 1), (1, 1)])
    (repo / "dvc.yaml").write_text(
        "plots:\n"
        "  - plots/train.csv:\n      x: step\n      y: loss\n"
        "  - confusion:\n      template: confusion\n      x: actual\n      y:\n        plots/confusion.csv: predicted\n"
        "  - roc:\n      template: roc\n      x: fpr\n      y:\n        plots/roc.csv: tpr\n"
    )


@pytest.mark.slow
def test_plots_render_in_chromium_without_network(tmp_path: Path):
    chromium = chromium_or_skip()

    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    dvc(repo, "init", "-q")
    # The project's DVC config (plots.html_template) and its .dvc/plots/ templates.
    shutil.copy2(PROJECT / ".dvc" / "config", repo / ".dvc" / "config")
    shutil.copytree(PROJECT / ".dvc" / "plots", repo / ".dvc" / "plots")
    write_plot_data(repo)
    dvc(repo, "plots", "show")
    page = repo / "dvc_plots" / "index.html"
    html = page.read_text(encoding="utf-8")
    assert re.search(r"<script[^>]*\bsrc\s*=", html) is None
    n_plots = html.count("vegaEmbed('#")
    assert n_plots == 3
    assert "var spec = {};" not in html  # every plot found its data

    result = dom_offline(chromium, page)
    assert result.returncode == 0, result.stderr[-3000:]
    console = [line for line in result.stderr.splitlines() if ":CONSOLE" in line]
    errors = [line for line in console if "Uncaught" in line or '"ERROR' in line or "Error:" in line]
    assert not errors, "\n".join(errors)

    charts = _Charts()
    charts.feed(result.stdout)
    assert charts.rendered == {"plots_train_csv": True, "confusion": True, "roc": True}, charts.rendered
    assert len(charts.rendered) == n_plots
    assert len(re.findall(r'<canvas[^>]*class="marks"', result.stdout)) == n_plots
    assert "error" not in " ".join(charts.text).lower()
