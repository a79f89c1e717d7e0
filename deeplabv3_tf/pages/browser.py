"""A headless Chromium driven over the DevTools protocol: load a page, read it, screenshot it.

Used by the tests of the project's pages (they load in a real browser without
console errors and every picture decodes) and by `tools/screenshot.py`. It
runs the installed Chromium (Debian's `chromium` package: /usr/bin/chromium;
or $DEEPLABV3_CHROMIUM) and downloads nothing. The protocol is spoken over one
WebSocket (the `websocket-client` package), so no driver binary is needed.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import pathlib
import shutil
import subprocess
import tempfile
import time
import urllib.request

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


class BrowserError(RuntimeError):
    """The browser could not be found, started or driven."""


def find_chromium() -> str | None:
    """Path of the Chromium to run: $DEEPLABV3_CHROMIUM, else the first on PATH; None if none."""
    configured = os.environ.get("DEEPLABV3_CHROMIUM")
    if configured:
        return configured if os.path.exists(configured) else None
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


class Browser:
    """One headless Chromium with one tab.

        with Browser() as browser:
            loaded = browser.load("runs/demo/eval/report.html")
            assert not loaded["errors"]
            browser.screenshot("report.png")

    Args:
      executable: Chromium binary (default: `find_chromium()`).
      width, height: Window size in CSS pixels.
      timeout: Seconds to wait for start-up and for each page load.
    """

    def __init__(self, executable: str | None = None, width: int = 1280, height: int = 900,
                 timeout: float = 60.0):
        import websocket  # websocket-client

        self.executable = executable or find_chromium()
        if not self.executable:
            raise BrowserError("No Chromium found: install Debian's chromium package "
                               "(apt-get install chromium) or set DEEPLABV3_CHROMIUM.")
        self.timeout = timeout
        self.width, self.height = width, height
        self._profile = tempfile.mkdtemp(prefix="deeplabv3_chromium_")
        args = [self.executable, "--headless=new", "--remote-debugging-port=0",
                f"--user-data-dir={self._profile}", "--no-first-run",
                "--no-default-browser-check", "--disable-gpu", "--disable-extensions",
                "--disable-dev-shm-usage", "--hide-scrollbars",
                f"--window-size={width},{height}", "about:blank"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            args.append("--no-sandbox")  # Chromium's sandbox refuses to run as root.
        # Chromium puts its singleton socket in a directory of its own under TMPDIR and
        # leaves it there when terminated: under the profile it goes with the profile.
        scratch = os.path.join(self._profile, "tmp")
        os.mkdir(scratch)
        self._process = subprocess.Popen(args, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL,
                                         env={**os.environ, "TMPDIR": scratch})
        self._ids = itertools.count(1)
        self.events: list[dict] = []
        try:
            port = self._port()
            page = next(t for t in self._targets(port) if t["type"] == "page")
            self._socket = websocket.create_connection(page["webSocketDebuggerUrl"],
                                                       timeout=timeout, suppress_origin=True)
            for domain in ("Page", "Runtime", "Log"):
                self.call(f"{domain}.enable")
        except BaseException:
            self.close()
            raise

    def _port(self) -> int:
        # Chromium writes the port it chose to <profile>/DevToolsActivePort.
        path = os.path.join(self._profile, "DevToolsActivePort")
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise BrowserError(f"{self.executable} exited with code "
                                   f"{self._process.returncode} at start-up.")
            if os.path.exists(path):
                with open(path) as f:
                    first = f.readline().strip()
                if first:
                    return int(first)
            time.sleep(0.05)
        raise BrowserError(f"{self.executable} did not start within {self.timeout:.0f} s.")

    @staticmethod
    def _targets(port: int) -> list[dict]:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            return json.load(r)

    def call(self, method: str, **params) -> dict:
        """Sends one protocol command and returns its result (events seen meanwhile are kept)."""
        message_id = next(self._ids)
        self._socket.send(json.dumps({"id": message_id, "method": method, "params": params}))
        while True:
            message = json.loads(self._socket.recv())
            if message.get("id") == message_id:
                if "error" in message:
                    raise BrowserError(f"{method}: {message['error'].get('message')}")
                return message.get("result", {})
            if "method" in message:
                self.events.append(message)

    def _wait_for(self, method: str, deadline: float) -> None:
        while not any(e["method"] == method for e in self.events):
            self._socket.settimeout(max(0.1, deadline - time.monotonic()))
            message = json.loads(self._socket.recv())
            if "method" in message:
                self.events.append(message)
            if time.monotonic() > deadline:
                raise BrowserError(f"No {method} within {self.timeout:.0f} s.")
        self._socket.settimeout(self.timeout)

    def evaluate(self, expression: str):
        """The value of a JavaScript expression in the page (awaited if a promise)."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                           awaitPromise=True)
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression[:60]}...: "
                               f"{result['exceptionDetails'].get('text', 'exception')}")
        return result["result"].get("value")

    def load(self, path: str) -> dict:
        """Opens a file (or URL), waits for it and its pictures to load.

        Returns:
          {"url", "title", "errors": console errors, uncaught exceptions and
           failed loads, as text; "images": [{"src", "natural_width",
           "natural_height"}] of every <img>}.
        """
        url = path if "://" in path else pathlib.Path(os.path.abspath(path)).as_uri()
        self.events.clear()
        deadline = time.monotonic() + self.timeout
        result = self.call("Page.navigate", url=url)
        if result.get("errorText"):
            raise BrowserError(f"{url}: {result['errorText']}")
        self._wait_for("Page.loadEventFired", deadline)
        # Every <img> has either decoded or failed once `complete` is true.
        self.evaluate("Promise.all(Array.from(document.images).map(i => i.complete ? 0 : "
                      "new Promise(r => { i.onload = i.onerror = r; })))")
        self.call("Runtime.evaluate", expression="0")  # collect events sent meanwhile
        images = self.evaluate(
            "Array.from(document.images).map(i => ({src: i.getAttribute('src'), "
            "natural_width: i.naturalWidth, natural_height: i.naturalHeight}))")
        return {"url": url, "title": self.evaluate("document.title"),
                "errors": self.errors(), "images": images}

    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and failed loads since the last `load`."""
        found = []
        for event in self.events:
            method, params = event["method"], event.get("params", {})
            if method == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                found.append("exception: " + details.get("exception", {}).get(
                    "description", details.get("text", "")))
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error",
                                                                                    "assert"):
                found.append("console.error: " + " ".join(
                    str(a.get("value", a.get("description", ""))) for a in params["args"]))
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                entry = params["entry"]
                found.append(f"{entry.get('source', 'log')}: {entry['text']} {entry.get('url', '')}"
                             .strip())
        return found

    def screenshot(self, path: str, full_page: bool = True, max_height: int = 0) -> str:
        """Saves a PNG of the page (the whole page's height with full_page, at most
        `max_height` CSS pixels when > 0)."""
        params = {"format": "png"}
        if full_page:
            size = self.call("Page.getLayoutMetrics")["cssContentSize"]
            height = min(size["height"], max_height) if max_height else size["height"]
            params.update(captureBeyondViewport=True, clip={
                "x": 0, "y": 0, "width": max(self.width, size["width"]),
                "height": height, "scale": 1})
        data = self.call("Page.captureScreenshot", **params)["data"]
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))
        return path

    def close(self) -> None:
        socket = getattr(self, "_socket", None)
        if socket is not None:
            try:
                socket.close()
            except OSError:
                pass
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
