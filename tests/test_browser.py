"""The Dagster UI in a real browser, on a materialized instance.

The tiny graph is materialized into a temporary Dagster home, ``dagster-webserver`` serves it on
127.0.0.1 from ``workspace.yaml`` (as ``make ui`` does), and Debian's headless Chromium, driven
over the Chrome DevTools Protocol (a websocket; no browser download, no driver binary), opens
its pages. The tests assert on the rendered DOM: every asset and the 34 data edges of the
lineage, a command-line run on the page of its job, the check results, tables and the report
summary shown inline, and a gallery image decoded from its ``data:`` URI (one click away: the UI
shows markdown inline only below 1,000 characters). Screenshots go to the ``screenshots`` folder
under the test's temporary directory, with ``timings.json`` (page load times) and
``metadata_sizes.json`` (serialized metadata per asset).

Without Chromium the tests fail with a message saying how to install it; they are skipped only
when ``ANIMAL_ASSETS_SKIP_BROWSER=1`` is set.
"""
from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import dagster as dg
import pytest

from tests.graph import NAMES, fork
from tests.test_lineage import DATA_EDGES

ROOT = Path(__file__).resolve().parents[1]
SKIP_VAR = "ANIMAL_ASSETS_SKIP_BROWSER"
EXTRAS = ["input_dataset", "review_file"]
SERVER_WAIT_S = 240  # the webserver imports the code location in a subprocess; slow when busy
PAGE_WAIT_S = 90
METADATA_LIMIT = 300 * 1024

pytestmark = pytest.mark.slow


def chromium_binary() -> str:
    if os.environ.get(SKIP_VAR) == "1":
        pytest.skip(f"{SKIP_VAR}=1: the browser tests are skipped on request")
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.fail(
            "Chromium is not installed, so the UI cannot be tested: install Debian's package "
            "(apt-get install -y chromium; `.ci/run` and `make test` do so when run as root) or "
            f"set {SKIP_VAR}=1 to skip these tests explicitly", pytrace=False,
        )
    return found


class Chromium:
    """Headless Chromium driven over the DevTools protocol: navigate, evaluate, screenshot."""

    def __init__(self, binary: str, profile: Path, *, width: int = 1440, height: int = 900):
        from websockets.sync.client import connect

        self._closing = contextlib.ExitStack()
        profile.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--no-first-run", "--no-default-browser-check", "--disable-background-networking",
             "--disable-component-update", "--remote-debugging-port=0",
             f"--user-data-dir={profile}", f"--window-size={width},{height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
        )
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            if self.proc.poll() is not None:
                raise RuntimeError(f"{binary} exited: {self.proc.stderr.read().decode()[-2000:]}")
            if time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"{binary} opened no DevTools port in 60 s")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as r:
            page = next(p for p in json.load(r) if p["type"] == "page")
        self.ws = self._closing.enter_context(
            connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=30))
        self._id = 0
        self.send("Page.enable")
        self.send("Emulation.setDeviceMetricsOverride", width=width, height=height,
                  deviceScaleFactor=1, mobile=False)

    def send(self, method: str, **params):
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:  # events arrive in between; the answer carries our id
            reply = json.loads(self.ws.recv(timeout=120))
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def evaluate(self, expression: str):
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True,
                           awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:80]}: {result['exceptionDetails'].get('exception')}")
        return result["result"].get("value")

    def goto(self, url: str) -> float:
        self.send("Page.navigate", url=url)
        return time.monotonic()

    def wait_for(self, expression: str, what: str, timeout: float = PAGE_WAIT_S):
        """Poll ``expression`` until it is truthy; fail naming ``what`` after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(f"(() => {{ try {{ return {expression}; }} "
                                  "catch (e) { return null; } })()")
            if value:
                return value
            if time.monotonic() > deadline:
                pytest.fail(f"the UI did not show {what} within {timeout:.0f} s "
                            f"(at {self.evaluate('location.href')})")
            time.sleep(0.2)

    def screenshot(self, path: Path) -> Path:
        """Save the viewport once animations (a dialog fading in) have ended."""
        self.wait_for("document.getAnimations().every(a => a.playState !== 'running')",
                      "the end of the animations", timeout=10)
        data = self.send("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        self._closing.close()
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _graphql(url: str, query: str) -> dict:
    request = urllib.request.Request(f"{url}/graphql", json.dumps({"query": query}).encode(),
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as r:
        return json.load(r)


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("screenshots")
    print(f"\nscreenshots: {folder}")
    return folder


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    binary = chromium_binary()
    chrome = Chromium(binary, tmp_path_factory.mktemp("chromium-profile"))
    yield chrome
    chrome.close()


@pytest.fixture(scope="module")
def materialized(tiny_graph, tmp_path_factory):
    """A copy of the tiny graph: the last test here observes a review edit on it."""
    return fork(tiny_graph, tmp_path_factory.mktemp("browser-graph"))


@pytest.fixture(scope="module")
def webserver(materialized, tmp_path_factory):
    """dagster-webserver on 127.0.0.1 over the materialized instance; yields its base URL."""
    chromium_binary()  # fail or skip before spending time on the server
    tmp, _, defs, dataset, _ = materialized
    home = tmp / "dagster_home"
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    dataset_res = defs.resources["dataset"]
    env = {**os.environ, "DAGSTER_HOME": str(home), "ANIMAL_ASSETS_DATASET": str(dataset),
           "ANIMAL_ASSETS_TRUTH": dataset_res.truth_path, "ANIMAL_ASSETS_OUTPUT": str(tmp / "out"),
           "ANIMAL_ASSETS_DEVICE": "cpu"}
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    binary = Path(sys.executable).with_name("dagster-webserver")
    command = [str(binary) if binary.exists() else "dagster-webserver", "-h", "127.0.0.1",
               "-p", str(port), "-w", str(ROOT / "workspace.yaml")]
    log = tmp_path_factory.mktemp("webserver") / "webserver.log"
    with open(log, "wb") as log_file:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log_file,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + SERVER_WAIT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"dagster-webserver exited ({proc.returncode}):\n"
                            f"{log.read_text()[-3000:]}")
            try:
                nodes = _graphql(url, "{ assetNodes { assetKey { path } } }")["data"]["assetNodes"]
                if len(nodes) >= len(NAMES) + len(EXTRAS):
                    break
            except (urllib.error.URLError, ConnectionError, KeyError, TypeError):
                pass  # not listening yet, or the code location is still loading
            if time.monotonic() > deadline:
                pytest.fail(f"dagster-webserver did not serve the assets in {SERVER_WAIT_S} s:\n"
                            f"{log.read_text()[-3000:]}")
            time.sleep(0.5)
        # the "Join the Dagster community" pop-up would cover the page
        assert _graphql(url, "mutation { setNuxSeen }")["data"]["setNuxSeen"] is True
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def timings(shots):
    measured: dict[str, float] = {}
    yield measured
    (shots / "timings.json").write_text(json.dumps(measured, indent=2) + "\n")
    print(f"\nUI timings (s): {measured}")


_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")

GRAPH_JS = """(() => {
  const svg = [...document.querySelectorAll('svg')].find(s => s.querySelector('foreignObject'));
  if (!svg) return null;
  const nodes = [...svg.querySelectorAll('foreignObject')].map(f => ({
    text: f.textContent, x: +f.getAttribute('x'), y: +f.getAttribute('y'),
    w: +f.getAttribute('width'), h: +f.getAttribute('height')}));
  const edges = [...svg.querySelectorAll('path[marker-end]')].map(p => p.getAttribute('d'));
  return {nodes, edges};
})()"""


def _rendered_edges(graph: dict, names: list[str]) -> set[tuple[str, str]]:
    """(source, target) of every edge path: it leaves the right side of its source node and
    ends at the left side of its target, as Dagster lays the graph out from left to right."""
    boxes = []
    for node in graph["nodes"]:
        inside = [n for n in names if n in node["text"]]
        boxes.append((max(inside, key=len) if inside else node["text"], node))

    def at(x: float, y: float, side: str) -> str:
        for name, b in boxes:
            edge_x = b["x"] + b["w"] if side == "right" else b["x"]
            if abs(x - edge_x) <= 12 and b["y"] <= y <= b["y"] + b["h"]:
                return name
        return f"? ({x:.0f}, {y:.0f})"

    edges = set()
    for d in graph["edges"]:
        numbers = [float(v) for v in _NUMBER.findall(d)]
        edges.add((at(numbers[0], numbers[1], "right"), at(numbers[-2], numbers[-1], "left")))
    return edges


def test_the_asset_graph_shows_every_asset_and_its_lineage(
    webserver, browser, materialized, shots, timings,
):
    expected = DATA_EDGES
    names = NAMES + EXTRAS
    start = browser.goto(f"{webserver}/asset-groups")
    graph = browser.wait_for(
        f"(() => {{ const g = {GRAPH_JS}; return g && g.nodes.length >= {len(names)} "
        f"&& g.edges.length >= {len(expected)} ? g : null; }})()",
        "the asset graph with every node and edge",
    )
    timings["asset_graph"] = round(time.monotonic() - start, 2)
    browser.screenshot(shots / "asset_graph.png")
    shown = {n for n in names if any(n in node["text"] for node in graph["nodes"])}
    assert shown == set(names)
    assert len(graph["nodes"]) == len(names)  # nothing else is drawn
    assert len(graph["edges"]) == len(expected)
    assert _rendered_edges(graph, names) == expected


RUNS_OF_JOB = """{ runsOrError(filter: {pipelineName: "%s",
    tags: [{key: ".dagster/repository", value: "__repository__@animal_assets"}]}) {
  ... on Runs { results { runId jobName status tags { key value } } } } }"""


def test_a_run_from_the_command_line_is_listed_on_its_job_page(
    webserver, browser, materialized, tiny_graph, shots, timings,
):
    run_id = materialized.summary["run_id"]
    # the query of the job page: runs of the job in this code location
    runs = _graphql(webserver, RUNS_OF_JOB % "pipeline")["data"]["runsOrError"]["results"]
    listed = {r["runId"]: r for r in runs}
    assert run_id in listed
    assert listed[run_id]["status"] == "SUCCESS"
    tags = {t["key"]: t["value"] for t in listed[run_id]["tags"]}
    assert tags["animal_assets/config"] == "custom" and tags["animal_assets/device"] == "cpu"
    assert tags["animal_assets/dataset"] == str(tiny_graph.dataset)  # the graph it was forked from
    start = browser.goto(f"{webserver}/locations/animal_assets/jobs/pipeline/runs")
    browser.wait_for(f"document.body.innerText.includes({json.dumps(run_id[:8])})",
                     "the command line's run on the page of its job")
    timings["job_page"] = round(time.monotonic() - start, 2)
    browser.screenshot(shots / "job_pipeline_runs.png")


TABLE_JS = """(() => {
  const tables = [...document.querySelectorAll('table')].map(t => ({
    head: [...t.querySelectorAll(':scope > thead > tr > th')].map(c => c.textContent.trim()),
    rows: [...t.querySelectorAll(':scope > tbody > tr')].map(
      r => [...r.cells].map(c => c.textContent.trim()))
  }));
  const found = tables.find(t => HEAD.every(h => t.head.includes(h)));
  return found && found.rows.length ? found : null;
})()"""


def test_an_asset_page_shows_its_tables_and_summary_without_a_click(
    webserver, browser, materialized, shots, timings,
):
    head = ["class", "given", "kept", "relabelled_out", "relabelled_in", "dropped", "after"]
    start = browser.goto(f"{webserver}/assets/clean_labels")
    table = browser.wait_for(TABLE_JS.replace("HEAD", json.dumps(head)),
                             "the class_counts table of clean_labels")
    timings["clean_labels_table"] = round(time.monotonic() - start, 2)
    assert table["head"] == head and len(table["rows"]) == 10
    assert [row[0] for row in table["rows"]] == [str(k) for k in range(10)]
    preview = browser.wait_for(TABLE_JS.replace("HEAD", json.dumps(["id", "action", "reason"])),
                               "the decisions_preview table of clean_labels")
    labels = {row[preview["head"].index("label")] for row in preview["rows"]}
    assert "dropped" in labels and "-1" not in labels
    browser.screenshot(shots / "clean_labels_tables.png")

    browser.goto(f"{webserver}/assets/eval_report")
    summary = browser.wait_for(TABLE_JS.replace("HEAD", json.dumps(["balanced accuracy"])),
                               "the report summary of eval_report, shown inline")
    assert summary["rows"][0][0] == "val_split"
    browser.screenshot(shots / "eval_report_summary.png")


CHECKS = {
    "raw_images": ["filenames_follow_rule", "labels_are_one_hot", "images_and_labels_pair_up",
                   "decode_as_64x64_rgb"],
    "clean_labels": ["follows_the_review", "no_class_mostly_dropped"],
    "balanced_train": ["export_follows_format", "shares_nothing_with_val_split",
                       "class_sizes_within_bounds"],
    "eval_report": ["val_accuracy_above_floor"],
}


@pytest.mark.parametrize("asset", sorted(CHECKS))
def test_an_asset_page_shows_its_check_results(webserver, browser, shots, timings, asset):
    checks = CHECKS[asset]
    start = browser.goto(f"{webserver}/assets/{asset}?view=checks")
    text = browser.wait_for(
        "(() => { const t = document.body.innerText; return "
        + " && ".join(f"t.includes({json.dumps(c)})" for c in checks)
        + f" && t.includes('Passed') && (t.match(/Succeeded/g) || []).length >= {len(checks)}"
        " ? t : null; })()",
        f"the check results of {asset}",
    )
    timings[f"{asset}_checks"] = round(time.monotonic() - start, 2)
    browser.screenshot(shots / f"{asset}_checks.png")
    assert f"Checks ({len(checks)})" in text
    assert "Failed" not in text


SHOW_MD_JS = """(() => {
  const row = [...document.querySelectorAll('tr')]
    .find(r => r.cells[0] && r.cells[0].textContent.trim() === KEY);
  const link = row && [...row.querySelectorAll('*')]
    .find(e => e.children.length === 0 && e.textContent.trim() === '[Show Markdown]');
  if (!link) return false;
  link.click();
  return true;
})()"""

DIALOG_IMAGE_JS = """(() => {
  const img = [...document.querySelectorAll('[role=dialog] img')]
    .find(i => i.src.startsWith('data:image/') && i.complete && i.naturalWidth > 0);
  return img ? {alt: img.alt, w: img.naturalWidth, h: img.naturalHeight,
                mime: img.src.slice(5, img.src.indexOf(';'))} : null;
})()"""


@pytest.mark.parametrize("asset, key, mime", [
    ("clean_labels", "gallery_relabelled", "image/jpeg"),
    ("ood_scores", "gallery_most_outlying", "image/jpeg"),
    ("balanced_train", "gallery_generated", "image/jpeg"),
    ("resnet34_model", "plot_training_curves", "image/png"),
    ("eval_report", "plot_confusion_val_split", "image/png"),
])
def test_an_asset_page_shows_its_galleries_and_plots(
    webserver, browser, shots, timings, asset, key, mime,
):
    start = browser.goto(f"{webserver}/assets/{asset}")
    browser.wait_for(SHOW_MD_JS.replace("KEY", json.dumps(key)).replace("link.click();", ""),
                     f"the metadata entry {key} of {asset}")
    shown = time.monotonic()
    assert browser.evaluate(SHOW_MD_JS.replace("KEY", json.dumps(key)))
    image = browser.wait_for(DIALOG_IMAGE_JS, f"the image of {key}")
    timings[f"{asset}_page"] = round(shown - start, 2)
    timings[f"{asset}_{key}_image"] = round(time.monotonic() - start, 2)
    browser.screenshot(shots / f"{asset}_{key}.png")
    assert image["mime"] == mime
    assert image["w"] >= 80 and image["h"] >= 80  # at least one thumbnail or a plot


def test_metadata_per_asset_is_bounded(materialized, shots):
    instance = materialized.instance
    sizes = {}
    for name in NAMES:
        event = instance.get_latest_materialization_event(dg.AssetKey(name))
        sizes[name] = len(dg.serialize_value(event.asset_materialization.metadata))
    (shots / "metadata_sizes.json").write_text(json.dumps(sizes, indent=2) + "\n")
    print(f"\nserialized metadata per asset (bytes): {sizes}")
    assert all(size <= METADATA_LIMIT for size in sizes.values()), sizes
    assert sizes["clean_labels"] > 20_000  # the galleries are in it


def test_the_run_log_has_the_progress_of_training(materialized):
    instance = materialized.instance
    event = instance.get_latest_materialization_event(dg.AssetKey("resnet34_model"))
    messages = [e.user_message for e in instance.all_logs(event.run_id)
                if e.step_key == "resnet34_model" and not e.is_dagster_event]
    assert any(m.startswith("epoch 1/1 (100%): loss ") for m in messages), messages
    assert any(m.startswith("training step ") for m in messages), messages


def test_an_observed_review_edit_shows_the_reviewed_assets_unsynced(
    webserver, browser, materialized, shots, tmp_path,
):
    """Last in this module: it changes the instance the other tests look at."""
    from animal_assets import runner
    from animal_assets.definitions import build_defs
    from animal_assets.resources import DatasetResource

    tmp, instance, defs, dataset, _ = materialized
    decisions = (tmp / "out" / "clean_labels" / "decisions.csv").read_text().splitlines()
    first_id = decisions[1].split(",")[0]
    review_path = tmp_path / "review.csv"
    review_path.write_text(f"id,action,label,note\n{first_id},drop,,blurred\n")
    reviewed = build_defs({**defs.resources, "dataset": DatasetResource(
        path=str(dataset), truth_path=defs.resources["dataset"].truth_path,
        review_path=str(review_path))})
    runner.observe(instance, reviewed)
    status = runner.sync_status(instance, reviewed)
    assert status["clean_labels"] == "unsynced" and status["embeddings"] == "synced", status

    browser.goto(f"{webserver}/assets/clean_labels")
    browser.wait_for("document.body.innerText.includes('Unsynced')", "clean_labels as unsynced")
    browser.screenshot(shots / "clean_labels_unsynced.png")
    browser.goto(f"{webserver}/assets/embeddings")
    browser.wait_for("document.body.innerText.includes('Latest materialization')",
                     "the page of embeddings")
    assert "Unsynced" not in browser.evaluate("document.body.innerText")
