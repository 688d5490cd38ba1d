"""The dashboard page in Debian's headless Chromium: its DOM once the charts are
drawn (each records what it drew in data-rendered) and screenshots."""

from __future__ import annotations

import asyncio
import os
import shutil
import struct
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from html.parser import HTMLParser
from pathlib import Path

import aiohttp
import orjson
import pytest

from tests.fixtures.worker import ROOT

ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
    "--enable-logging=stderr", "--v=0",
    # Virtual time only advances while no request is pending, so the page's
    # fetches complete and its charts are drawn before the DOM is dumped.
    "--virtual-time-budget=30000",
]


class Dom(HTMLParser):
    """Attributes of elements with an id, the text under each, and the trend's points."""

    def __init__(self) -> None:
        super().__init__()
        self.by_id: dict[str, dict[str, str | None]] = {}
        self.text: dict[str, list[str]] = {}
        self.body: dict[str, str | None] = {}
        self.stack: list[str | None] = []
        self.points = 0
        self.html = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "body":
            self.body = found
        if tag == "circle" and found.get("class") == "pt":
            self.points += 1
        element_id = found.get("id")
        if element_id:
            self.by_id[element_id] = found
        if tag not in ("circle", "rect", "path", "line", "input", "link", "meta", "br"):
            self.stack.append(element_id)

    def handle_endtag(self, tag: str) -> None:
        if tag not in ("circle", "rect", "path", "line", "input", "link", "meta", "br") and self.stack:
            self.stack.pop()

    def handle_data(self, data: str) -> None:
        for element_id in self.stack:
            if element_id:
                self.text.setdefault(element_id, []).append(data)

    def rendered(self, element_id: str) -> object:
        return orjson.loads(self.by_id[element_id]["data-rendered"] or "null")

    def joined(self, element_id: str) -> str:
        return " ".join(self.text.get(element_id, []))


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.fail("Debian's chromium is needed for this test: apt-get install -y chromium")
    return found


def run_chromium(tmp_path: Path, url: str, *action: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium'}", *action, url],
        capture_output=True, timeout=180, env={**os.environ, "TZ": "UTC"},
    )


def ready_page(dumped: subprocess.CompletedProcess) -> Dom:
    """The dumped DOM of a page that finished drawing with no console output at all
    (no errors, no warnings, no failed loads) and no failed panel."""
    assert dumped.returncode == 0, dumped.stderr.decode()[-2000:]
    console = [line for line in dumped.stderr.decode().splitlines() if ":CONSOLE" in line]
    assert console == []
    dom = Dom()
    dom.html = dumped.stdout.decode()
    dom.feed(dom.html)
    assert dom.body.get("data-state") == "ready", dom.body
    assert "data-errors" not in dom.body
    return dom


def screenshot(tmp_path: Path, url: str, name: str, size: tuple[int, int]) -> Path:
    """A PNG of the page at `size`, under test-artifacts/."""
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / name
    shot.unlink(missing_ok=True)
    pictured = run_chromium(tmp_path, url, f"--window-size={size[0]},{size[1]}", f"--screenshot={shot}")
    assert pictured.returncode == 0, pictured.stderr.decode()[-2000:]
    header = shot.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", header[16:24]) == size
    return shot


class DevTools:
    """A page in headless Chromium driven over the DevTools protocol (real time, no
    virtual clock): evaluate script in it and collect what it logs."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.next_id = 0
        self.logged: list[dict] = []

    async def call(self, method: str, **params: object) -> dict:
        self.next_id += 1
        await self.ws.send_json({"id": self.next_id, "method": method, "params": params})
        while True:
            message = await self.ws.receive_json(timeout=60)
            if message.get("id") == self.next_id:
                assert "error" not in message, message
                return message["result"]
            if message.get("method") in ("Runtime.consoleAPICalled", "Runtime.exceptionThrown",
                                         "Log.entryAdded"):
                self.logged.append(message)

    async def value(self, expression: str) -> object:
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                                 awaitPromise=True)
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")


@asynccontextmanager
async def devtools(tmp_path: Path, port: int) -> AsyncIterator[DevTools]:
    """Chromium with its DevTools endpoint on `port`, attached to its one page."""
    flags = [f for f in CHROMIUM_FLAGS if not f.startswith("--virtual-time-budget")]
    proc = subprocess.Popen(
        [chromium(), *flags, f"--user-data-dir={tmp_path / 'chromium-cdp'}",
         f"--remote-debugging-port={port}", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "TZ": "UTC"},
    )
    try:
        async with aiohttp.ClientSession() as session:
            pages: list[dict] = []
            for _ in range(300):
                try:
                    async with session.get(f"http://127.0.0.1:{port}/json/list") as resp:
                        pages = [t for t in await resp.json() if t["type"] == "page"]
                except aiohttp.ClientError:
                    pages = []
                if pages:
                    break
                await asyncio.sleep(0.1)
            assert pages, "chromium's DevTools endpoint did not answer"
            async with session.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                tools = DevTools(ws)
                for domain in ("Page", "Runtime", "Log"):
                    await tools.call(f"{domain}.enable")
                yield tools
    finally:
        proc.terminate()
        proc.wait(30)
