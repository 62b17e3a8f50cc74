"""`--model_config_file_poll_wait_seconds`: the model config file re-read while serving.

As TF Serving does: every N seconds the `ModelServerConfig` file is read again and, when it lists
other models or other settings than those served, the server switches to it (models added are
loaded, models removed are unloaded, kept models keep their loaded versions). A file that does not
parse, or lists no model, is logged and ignored: the models served stay as they are.
"""

from __future__ import annotations

import threading

from ..errors import log
from .config import read_model_config_file


class ConfigFileWatcher:
    """Re-reads a model config file every `seconds` on a background thread.

    Args:
        path: the `--model_config_file`.
        seconds: the wait between two reads; must be positive.
        current: a callable returning the `ModelConfig`s served now.
        reload: a callable switching the server to a list of `ModelConfig`s.

    Raises:
        ValueError: on a wait that is not positive.
    """

    def __init__(self, path: str, seconds: float, current, reload):
        if not seconds > 0:
            raise ValueError(f"the config file poll wait must be positive. Received: seconds={seconds}")
        self.path, self.seconds = path, seconds
        self._current, self._reload = current, reload
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="model-config-poller", daemon=True)

    def check(self) -> bool:
        """Reads the file once; switches to it when it differs from what is served. True if it did."""
        try:
            configs = read_model_config_file(self.path)
        except (ValueError, OSError) as error:
            log.error("Failed to read ModelServerConfig file (the models served stay as they are): %s", error)
            return False
        if [c.SerializeToString(deterministic=True) for c in configs] == [
            c.SerializeToString(deterministic=True) for c in self._current()
        ]:
            return False
        log.info("Model config file %s changed: serving models %s", self.path, [c.name for c in configs])
        self._reload(configs)
        return True

    def start(self) -> ConfigFileWatcher:
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.seconds):
            try:
                self.check()
            except Exception:  # keep watching whatever one pass met
                log.exception("Reloading the model config file failed")

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)
