"""`spr webui` in a real headless Chromium: the demo's chosen-only SFT dataset is listed under the default Stage,
its DPO dataset under Stage = DPO and its preview shows the chosen/rejected pair.

Chromium and chromedriver come from Debian (`scripts/setup.sh` installs them when run as root). CI must
exercise this test, so a missing browser fails it there; only a non-root local run may skip.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

from spr_plugin.core.errors import SPRError
from spr_plugin.core.frame import ImageFrame
from spr_plugin.llamafactory.webui import board_frame, dataset_frames, llamaboard_command, prepare_workspace
from spr_plugin.settings import WebUIConfig

REPO = Path(__file__).resolve().parents[1]
CHROME_FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1400,2000",
]


def _browser_missing(reason: str) -> None:
    if os.environ.get("CI") or os.geteuid() == 0:
        pytest.fail(f"{reason}: run `bash scripts/setup.sh` as root (installs Debian chromium + chromium-driver)")
    pytest.skip(f"{reason} (not root and not CI: install chromium chromium-driver to run this test)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"spr webui exited with {proc.returncode}: {proc.stdout.read() if proc.stdout else ''}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"LlamaBoard did not answer on {url} within {timeout} s")


def _copy(data: Path, tmp_path: Path) -> Path:
    """A copy of a dataset folder (the test may change it)."""
    dest = tmp_path / "data"
    shutil.copytree(data, dest)
    return dest


def test_workspace_links_data_and_refuses_foreign_folders(built_dataset, tmp_path):
    # Any dataset folder will do: the shared build, not the demo run (which trains; slow tests only).
    data = Path(shutil.copytree(built_dataset.data, tmp_path / "data"))
    ws = prepare_workspace(WebUIConfig(data, workspace=tmp_path / "ws"))
    assert (ws / "data").is_symlink() and (ws / "data").resolve() == data.resolve()
    assert prepare_workspace(WebUIConfig(data, workspace=tmp_path / "ws")) == ws  # idempotent
    (tmp_path / "ws2" / "data").mkdir(parents=True)
    with pytest.raises(SPRError, match="not a link"):
        prepare_workspace(WebUIConfig(data, workspace=tmp_path / "ws2"))
    with pytest.raises(SPRError, match="no dataset_info.json"):
        prepare_workspace(WebUIConfig(tmp_path / "ws2", workspace=tmp_path / "ws3"))


@contextmanager
def llamaboard(source: Path, tmp_path: Path):
    """`spr webui` on a copy of a dataset folder (free loopback port) and a headless Chromium on its page."""
    chromium, driver_bin = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver_bin:
        _browser_missing("chromium / chromedriver not installed")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _browser_missing("selenium is not installed (pip install -e '.[test]')")

    data = _copy(source, tmp_path)
    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "spr_plugin.cli", "webui", "--dataset-dir", str(data), "--port", str(port)]
    cmd += ["--workspace", str(tmp_path / "ws")]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    driver = None
    try:
        _wait_http(f"http://127.0.0.1:{port}/", proc)
        options = webdriver.ChromeOptions()
        options.binary_location = chromium
        for flag in [*CHROME_FLAGS, f"--user-data-dir={tmp_path / 'chrome-profile'}"]:
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service(driver_bin), options=options)
        driver.get(f"http://127.0.0.1:{port}/")
        yield driver, data, tmp_path / "ws"
    finally:
        if driver is not None:
            driver.quit()
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class UI:
    """The few LlamaBoard interactions the tests need, by visible labels (LlamaBoard sets no element ids)."""

    def __init__(self, driver, timeout: float = 60) -> None:
        from selenium.webdriver.support.ui import WebDriverWait

        self.d, self.wait = driver, WebDriverWait(driver, timeout)

    def block(self, label: str):
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as ec

        xpath = f"//span[@data-testid='block-info' and normalize-space(text())='{label}']"
        span = self.wait.until(ec.presence_of_element_located((By.XPATH, xpath)))
        return span.find_element(By.XPATH, "./ancestor::div[contains(@class,'block')][1]")

    def pick(self, label: str, value: str, typed: bool = False) -> None:
        """Open a dropdown (its focus event refreshes the options) and click one option."""
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as ec

        box = self.block(label).find_element(By.CSS_SELECTOR, "input")
        box.click()
        if typed:
            box.send_keys(value)
        self.wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, f"ul.options li[aria-label='{value}']"))).click()
        self.wait.until(lambda d: value in (box.get_attribute("value") or "") or value in self.block(label).text)

    def fill(self, label: str, value: str) -> None:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.common.keys import Keys

        field = self.block(label).find_element(By.CSS_SELECTOR, "textarea, input")
        field.click()
        field.send_keys(Keys.CONTROL, "a")
        field.send_keys(value, Keys.TAB)

    def click(self, text: str) -> None:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as ec

        xpath = f"//button[normalize-space(.)='{text}' and not(@disabled)]"
        self.d.execute_script("arguments[0].click()", self.wait.until(ec.element_to_be_clickable((By.XPATH, xpath))))

    def body(self) -> str:
        from selenium.webdriver.common.by import By

        return self.d.find_element(By.TAG_NAME, "body").text

    def loaded(self) -> None:
        from selenium.webdriver.common.by import By

        self.wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "input[aria-label='Stage']").get_attribute("value"))


@pytest.mark.slow
def test_llamaboard_lists_and_previews_the_dpo_dataset(demo_run, tmp_path):
    with llamaboard(demo_run[0] / "data", tmp_path) as (driver, data, _):
        ui = UI(driver)
        ui.loaded()
        ui.pick("Dataset", "spr_demo_chosen")  # the default Stage (SFT) lists the chosen-only companion
        ui.pick("Stage", "DPO")  # ranking datasets are listed only for DPO / reward modelling
        ui.pick("Dataset", "spr_demo")
        ui.click("Preview dataset")
        expected = json.loads((data / "spr_demo.jsonl").read_text().splitlines()[0])
        chosen, rejected = expected["chosen"]["value"], expected["rejected"]["value"]
        ui.wait.until(lambda d: chosen[:60] in ui.body())
        body = ui.body()
        assert chosen[:60] in body and rejected[:60] in body and "'chosen'" in body and "'rejected'" in body
        driver.save_screenshot(str(tmp_path / "llamaboard_preview.png"))


@pytest.mark.slow
def test_llamaboard_trains_the_demo_on_cpu(demo_run, tmp_path):
    """The clicks docs/viewing.md lists: LoRA DPO of the demo's tiny model from the web UI, on CPU (fp32)."""
    model = demo_run[0] / "tiny-qwen2vl-warm"
    with llamaboard(demo_run[0] / "data", tmp_path) as (driver, _, workspace):
        ui = UI(driver, timeout=300)
        ui.loaded()
        ui.pick("Model name", "Qwen2-VL-2B-Instruct", typed=True)  # a multimodal name: image args are sent
        ui.fill("Model path", str(model))
        ui.pick("Stage", "DPO")
        ui.pick("Dataset", "spr_demo")
        ui.pick("Compute type", "fp32")  # the default bf16 fails on CPU
        ui.fill("Cutoff length", "1024")
        ui.click("Start")
        ui.wait.until(lambda d: list(workspace.glob("saves/*/lora/*/adapter_model.safetensors")))
        (run,) = [p.parent for p in workspace.glob("saves/*/lora/*/adapter_model.safetensors")]
        ui.wait.until(lambda d: (run / "train_results.json").is_file())
        assert json.loads((run / "train_results.json").read_text())["train_loss"] > 0
        args = (run / "training_args.yaml").read_text()
        assert "stage: dpo" in args and "dataset_dir: data" in args and "bf16" not in args
        assert "image_max_pixels: 12544" in args  # the demo's frame, preset by spr webui: not LlamaBoard's 589824


@pytest.fixture(scope="module")
def small_frame_dataset(built_dataset, tmp_path_factory):
    """The shared build's candidates built again in the demo's small frame (12544), through `spr build`."""
    from helpers import run_spr

    root = tmp_path_factory.mktemp("small_frame")
    summary = built_dataset.summary["config"]
    p = run_spr("build", "--annotations", summary["annotations"], "--images", summary["image_root"],
                "--candidates", summary["candidates_file"], "--work-dir", root / "work", "--dataset-dir", root / "data",
                "--name", "spr_small", "--k", 4, "--seed", 3, "--min-margin", 0, "--image-max-pixels", 12544)  # fmt: skip
    assert p.returncode == 0, p.stderr
    return root / "data"


def test_board_frame_presets_one_frame_and_names_each_when_they_differ(small_frame_dataset, built_dataset):
    frame, line = board_frame(dataset_frames(small_frame_dataset))
    assert frame == ImageFrame(12544, 1024) and "12544" in line
    mixed = {"a": ImageFrame(12544, 1024), "b": ImageFrame()}
    assert board_frame(mixed)[0] is None and "a: 12544/1024; b: 589824/1024" in board_frame(mixed)[1]
    assert board_frame({"a": ImageFrame(None, 1024)})[0] is None  # LlamaBoard cannot express "no pre-resize"
    assert board_frame({})[0] is None
    assert llamaboard_command(ImageFrame(12544, 1024))[-4:] == ["--image-max-pixels", "12544", "--image-min-pixels", "1024"]


@pytest.mark.slow
def test_llamaboard_preview_command_shows_the_dataset_frame(small_frame_dataset, tmp_path):
    """docs/viewing.md's UI route on a 12544 dataset: the *Preview command* LlamaBoard shows trains in 12544."""
    with llamaboard(small_frame_dataset, tmp_path) as (driver, _, _):
        ui = UI(driver)
        ui.loaded()
        ui.pick("Model name", "Qwen2-VL-2B-Instruct", typed=True)  # a multimodal name: image args are sent
        ui.pick("Stage", "DPO")
        ui.pick("Dataset", "spr_small")
        ui.click("Preview command")
        ui.wait.until(lambda d: "--image_max_pixels" in ui.body())
        body = ui.body()
        assert "--image_max_pixels 12544" in body and "--image_min_pixels 1024" in body, body[-2000:]
        assert "--image_max_pixels 589824" not in body
        driver.save_screenshot(str(tmp_path / "llamaboard_preview_command.png"))
