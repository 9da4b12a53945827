"""The machine's load, sampled in the background while a benchmark runs, so every wall-clock
figure is recorded beside how busy the cores were (other people's jobs included)."""

from __future__ import annotations

import os
import threading

import psutil

SAMPLE_EVERY_S = 10.0


class LoadSampler:
    """Samples the 1-minute load average and whole-machine CPU use every `every_s` seconds
    between `with` entry and exit; `summary()` holds min/mean/max of both."""

    def __init__(self, every_s: float = SAMPLE_EVERY_S):
        self.every_s = every_s
        self.load: list[float] = []
        self.cpu_percent: list[float] = []
        self.nice_percent: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="load-sampler")

    def _sample(self) -> None:
        self.load.append(os.getloadavg()[0])
        self.cpu_percent.append(psutil.cpu_percent(interval=None))
        # CPU time of niced (background, `nice -n 19`) processes: the load average counts
        # them, but the scheduler gives a benchmark at normal priority nearly all it asks for.
        self.nice_percent.append(psutil.cpu_times_percent(interval=None).nice)

    def _run(self) -> None:
        psutil.cpu_percent(interval=None)  # the first calls only start the measurement
        psutil.cpu_times_percent(interval=None)
        while not self._stop.wait(self.every_s):
            self._sample()

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        if not self.load:
            self._sample()

    def summary(self) -> dict[str, object]:
        def stats(values: list[float]) -> dict[str, float]:
            return {
                "min": round(min(values), 2),
                "mean": round(sum(values) / len(values), 2),
                "max": round(max(values), 2),
            }

        return {
            "cores": os.cpu_count(),
            "samples": len(self.load),
            "load_average_1min": stats(self.load),
            "cpu_percent": stats(self.cpu_percent),
            "cpu_percent_niced_processes": stats(self.nice_percent),
        }
