"""The README's examples, run as a reader would run them, in order, in one folder.

Every fenced `bash` and `python` block of README.md is a test (one a block, named by its line). Shell blocks
run in bash (`set -eo pipefail`), Python blocks in one interpreter that lives through the whole README, as
a notebook would, so a block may use what an earlier one defined. The folder holds what the README
assumes a reader has: generated VOC and SBD trees, photos, a VGG16 weight file in Keras's layout (seeded
random weights, narrow), the reference's Caffe files by their names (tiny, random), and links to the
checkout's `tools/`, `tests/` and `serving/`.

An HTML comment on the line before a block changes how it runs, and says so to anyone reading the
README's source:

    <!-- example: {"replace": [["--epochs 50", "--epochs 1"]]} -->   small sizes for the test
    <!-- example: {"skip": "why"} -->                                   not run (a download, Docker, ...)
    <!-- example: {"background": "http://localhost:8501/v1/models/fcn"} -->
                                      started and left running (a server) until that address answers

Ports 8500 and 8501 become free ports, and `curl -s` becomes `curl -sf` (an HTTP error fails the block).
"""

from __future__ import annotations

import json
import os
import queue
import re
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field

import numpy as np
import pytest
from data_trees import make_sbd, make_voc
from PIL import Image
from testing import TINY, free_port, he_init, write_legacy_h5

pytestmark = pytest.mark.slow

CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(CHECKOUT, "README.md")
DIRECTIVE = re.compile(r"^<!-- example: (\{.*\}) -->$")
RUNNABLE = ("bash", "python")
BLOCK_TIMEOUT = 600


@dataclass
class Block:
    line: int  # of the opening fence, 1-based
    language: str
    code: str
    directive: dict = field(default_factory=dict)

    @property
    def runnable(self) -> bool:
        return self.language in RUNNABLE


def readme_blocks(text: str) -> list[Block]:
    """The fenced blocks of a Markdown text, each with the `<!-- example: ... -->` directive above it."""
    blocks, lines, index = [], text.splitlines(), 0
    while index < len(lines):
        fence = re.match(r"^```(\w*)\s*$", lines[index])
        if not fence:
            index += 1
            continue
        end = next(i for i in range(index + 1, len(lines)) if lines[i].startswith("```"))
        above = DIRECTIVE.match(lines[index - 1]) if index else None
        directive = json.loads(above.group(1)) if above else {}
        blocks.append(Block(index + 1, fence.group(1), "\n".join(lines[index + 1 : end]) + "\n", directive))
        index = end + 1
    return blocks


def test_directives_are_valid_and_only_above_code():
    text = open(README, encoding="utf-8").read()
    blocks = readme_blocks(text)
    assert sum(block.runnable for block in blocks) >= 25
    for block in blocks:
        assert set(block.directive) <= {"replace", "skip", "background"}, block.line
        assert not block.directive or block.runnable, f"line {block.line}: a directive above a {block.language!r}"
        for old, _ in block.directive.get("replace", []):
            assert old in block.code, f"line {block.line}: {old!r} is not in the block"
    # Every directive is attached to a block: none is left where a block was moved away.
    directives = sum(bool(DIRECTIVE.match(line)) for line in text.splitlines())
    assert directives == sum(bool(block.directive) for block in blocks)


BLOCKS = [block for block in readme_blocks(open(README, encoding="utf-8").read()) if block.runnable]


def photo(path, size, seed):
    """A photo-like picture: smooth colour blobs, so JPEG keeps it close."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (size[0] // 8 + 1, size[1] // 8 + 1, 3)).astype(np.uint8)
    Image.fromarray(small).resize(size[::-1], Image.BILINEAR).save(path)


def make_workspace(root) -> None:
    """What the README assumes its reader has, generated."""
    import caffe_nets

    from keras_fcn.backbone import vgg16_classifier
    from keras_fcn.data.sources import SEG11VALID

    for name in ("tools", "tests", "serving", "examples"):
        os.symlink(os.path.join(CHECKOUT, name), os.path.join(root, name))
    with open(SEG11VALID) as handle:
        valid = handle.read().split()[:2]  # real seg11valid ids: the recipes validate on them
    train = ["2008_900001", "2008_900002", "2008_900003", "2008_900004"]
    for prefix in ("", "data/"):  # the README's paths, and the recipes' defaults under data/
        make_voc(os.path.join(root, prefix, "VOCdevkit/VOC2012"), {"train": train, "val": valid, "seg11valid": valid})
        make_sbd(os.path.join(root, prefix, "benchmark_RELEASE/dataset"), {"train": valid + train})
    for name, size in (("photo1.jpg", (60, 80)), ("photo2.jpg", (45, 50)), ("street.jpg", (48, 64))):
        photo(os.path.join(root, name), size, seed=len(name))
    photo(os.path.join(root, "park.png"), (40, 56), seed=3)
    photo(os.path.join(root, "aerial.jpg"), (90, 120), seed=4)
    classifier = he_init(vgg16_classifier(TINY["backbone_filters"], TINY["fc_units"], classes=10))
    write_legacy_h5(classifier, os.path.join(root, "vgg16_weights_tf_dim_ordering_tf_kernels.h5"))
    # The reference's weight files by their names: tiny nets of their exact layer structure.
    caffe_nets.fcn_net("fcn8s", 21).write(root, (32, 32), stem="fcn8s-heavy-pascal")
    caffe_nets.vgg16_net(classes=1000).write(root, (32, 32), stem="VGG_ILSVRC_16_layers")
    with open(os.path.join(root, "names.txt"), "w") as handle:
        handle.write("".join(f"class{i}\n" for i in range(21)))


class PythonSession:
    """One interpreter for all the README's Python blocks, fed a block at a time, as a notebook's kernel."""

    DRIVER = (
        "import json, sys, traceback\n"
        "namespace = {'__name__': '__main__'}\n"
        "for message in sys.stdin:\n"
        "    block = json.loads(message)\n"
        "    try:\n"
        "        exec(compile(block['code'], f\"README.md line {block['line']}\", 'exec'), namespace)\n"
        "        answer = {'ok': True}\n"
        "    except BaseException:\n"
        "        answer = {'ok': False, 'error': traceback.format_exc()}\n"
        "    sys.stdout.flush()\n"
        "    print('\\x00' + json.dumps(answer), flush=True)\n"
    )

    def __init__(self, cwd, env):
        self.log = open(os.path.join(cwd, "python-session.log"), "w+")  # noqa: SIM115 - closed in close()
        self.process = subprocess.Popen(
            [sys.executable, "-u", "-c", self.DRIVER], cwd=cwd, env=env, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
        )  # fmt: skip
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put("")  # the interpreter has exited

    def run(self, block: Block, code: str) -> str:
        self.process.stdin.write(json.dumps({"line": block.line, "code": code}) + "\n")
        self.process.stdin.flush()
        printed, deadline = [], time.monotonic() + BLOCK_TIMEOUT
        while True:
            line = self.lines.get(timeout=max(deadline - time.monotonic(), 1))
            if not line:
                pytest.fail(f"the Python session exited: {self.stderr()}")
            if line.startswith("\x00"):
                answer = json.loads(line[1:])
                assert answer["ok"], f"README line {block.line}:\n{''.join(printed)[-2000:]}{answer['error']}"
                return "".join(printed)
            printed.append(line)

    def stderr(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()[-3000:]

    def close(self):
        self.process.stdin.close()
        self.process.wait(timeout=60)
        self.log.close()


class Reader:
    """The folder and the processes of one reader going through the README."""

    def __init__(self, root):
        self.root = root
        self.ports = {"8500": str(free_port()), "8501": str(free_port())}
        self.env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
        self.env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + self.env.get("PATH", "")
        self.env["TF_CPP_MIN_LOG_LEVEL"] = "3"
        self.env["MPLBACKEND"] = "Agg"
        self.python = PythonSession(root, self.env)
        self.background: list[tuple[subprocess.Popen, object]] = []

    def code(self, block: Block) -> str:
        code = block.code
        for old, new in block.directive.get("replace", []):
            code = code.replace(old, new)
        for port, free in self.ports.items():
            code = re.sub(rf"\b{port}\b", free, code)
        return code.replace("curl -s ", "curl -sf ")

    def run(self, block: Block) -> None:
        code = self.code(block)
        if block.language == "python":
            self.python.run(block, code)
        elif "background" in block.directive:
            self.start(block, code)
        else:
            result = subprocess.run(
                ["bash", "-c", "set -eo pipefail\n" + code], cwd=self.root, env=self.env, capture_output=True,
                text=True, timeout=BLOCK_TIMEOUT,
            )  # fmt: skip
            log = (result.stdout + result.stderr)[-4000:]
            assert result.returncode == 0, f"README line {block.line} exited {result.returncode}:\n{code}\n{log}"

    def start(self, block: Block, code: str) -> None:
        log = open(os.path.join(self.root, f"background-{block.line}.log"), "w+")  # noqa: SIM115
        process = subprocess.Popen(
            ["bash", "-c", "exec " + code.strip()], cwd=self.root, env=self.env, stdout=log, stderr=subprocess.STDOUT
        )
        self.background.append((process, log))
        url = self.code(Block(block.line, "", block.directive["background"]))
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if process.poll() is not None:
                log.seek(0)
                pytest.fail(f"README line {block.line} exited {process.returncode}:\n{log.read()[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=5):
                    return
            except OSError:
                time.sleep(0.5)
        pytest.fail(f"README line {block.line}: {url} did not answer within 180 s")

    def close(self) -> None:
        self.python.close()
        for process, log in self.background:
            process.terminate()
            process.wait(timeout=60)
            log.close()


@pytest.fixture(scope="module")
def reader(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("reader"))
    make_workspace(root)
    reader = Reader(root)
    yield reader
    reader.close()


@pytest.mark.parametrize("block", BLOCKS, ids=[f"line{block.line}" for block in BLOCKS])
def test_readme_block(reader, block):
    if "skip" in block.directive:
        pytest.skip(block.directive["skip"])
    reader.run(block)


def test_a_failing_block_fails_naming_its_line(tmp_path):
    reader = Reader(str(tmp_path))
    try:
        with pytest.raises(AssertionError, match="README line 7 exited 3"):
            reader.run(Block(7, "bash", "true\nexit 3\necho never\n"))
        with pytest.raises(AssertionError, match=r"README line 9:[\s\S]*NameError: name 'undefined' is not defined"):
            reader.run(Block(9, "python", "x = 1\nundefined\n"))
        reader.run(Block(11, "python", "assert x == 1  # the session kept what the failed block defined\n"))
        with pytest.raises(AssertionError, match="README line 13"):
            reader.run(Block(13, "bash", "false | cat\n"))  # pipefail
    finally:
        reader.close()
