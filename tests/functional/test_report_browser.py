"""The report in a real headless Chromium: it renders offline and no injected script runs."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from fakes.run_data import CITY, RUN_ID, seed_run

from saeflow.core import layout
from saeflow.steps import aggregate, label_feature, write_report

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium is not installed")


def chromium(tmp_path: Path, *args: str) -> str:
    profile = tmp_path / "profile"
    done = subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return done.stdout


@pytest.fixture
def report_file(store, tmp_path) -> Path:
    state = seed_run(store, label_backend="offline")
    state["aggregate"] = aggregate.run(state, store=store)
    state["labels"] = [
        label_feature.run(
            {**item, **state["aggregate"]["label_settings"], "run_id": RUN_ID},
            store=store,
            registry=None,
            labeler_for=lambda backend, model_id: None,
        )
        for item in state["aggregate"]["features"]
    ]
    write_report.run(state, store=store)
    path = tmp_path / "index.html"
    path.write_bytes(store.get_bytes(layout.report_html_key(RUN_ID)))
    return path


def test_report_renders_in_chromium_without_running_injected_code(report_file, tmp_path):
    dom = chromium(tmp_path, "--dump-dom", report_file.as_uri())
    assert 'data-saeflow-ready="1"' in dom  # our inline script ran...
    assert "PWNED" not in re.search(r"<title>(.*?)</title>", dom, re.S).group(
        1
    )  # ...injected ones did not
    assert not re.search(r"<img\b", dom)  # the hostile <img onerror> stayed text
    assert "&lt;/script&gt;&lt;img src=x" in dom
    assert f'id="feature-{CITY}"' in dom
    assert "[heuristic]" in dom
    highlighted = re.findall(
        r'<span class="tok" style="background:rgba\(255,112,0,([0-9.]+)\)"', dom
    )
    assert highlighted and max(float(a) for a in highlighted) == 1.0
    assert dom.count('class="tok"') > 40
    assert "<svg" in dom and "Steering" in dom and "Contrast" in dom


def test_report_screenshot_is_not_blank(report_file, tmp_path):
    shot = tmp_path / "shot.png"
    chromium(tmp_path, f"--screenshot={shot}", "--window-size=1200,1600", report_file.as_uri())
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 20_000  # a rendered page, not an empty canvas


def test_clicking_a_token_pins_its_top_features(report_file, tmp_path):
    # The product page plus one test-only script that clicks the strongest city token
    # and switches the colouring to feature 7; --dump-dom then shows what the page did.
    clicker = (
        "<script>window.addEventListener('load',function(){"
        "var t=[].slice.call(document.querySelectorAll('#prompts .tok[data-feats]'))"
        f".filter(function(s){{return s.getAttribute('data-feats').indexOf('{CITY}:')===0;}})[0];"
        "t.click();"
        "var sel=document.getElementById('colour-by');"
        f"sel.value='{CITY}';sel.dispatchEvent(new Event('change'));"
        "});</script></body>"
    )
    page = report_file.read_text().replace("</body>", clicker)
    probe = tmp_path / "probe.html"
    probe.write_text(page)
    dom = chromium(tmp_path, "--dump-dom", probe.as_uri())
    panel = re.search(r'<div id="token-panel" class="panel">(.*?)</div>', dom, re.S)
    assert panel, "the token panel did not open"
    assert f'href="#feature-{CITY}"' in panel.group(1) and "[heuristic]" in panel.group(1)
    assert 'class="tok pinned"' in dom
    assert "rgba(37, 99, 235" in dom  # recoloured by the chosen feature
