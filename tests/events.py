"""Calling a page's events over HTTP as the browser does: by the event's index in ``/config``,
with any session hash the caller chooses (``/gradio_api/queue/join`` and its event stream, or
``/gradio_api/run/predict`` for events outside the queue). Tests use it to send what a hostile
visitor can send: another visitor's session hash, no token or a different one."""

from __future__ import annotations

import json
import uuid

import httpx


class Page:
    """One visitor's view of a running app: its config, a session hash, and its events."""

    def __init__(self, url: str, session_hash: str | None = None, timeout: float = 300.0):
        self.url = url.rstrip("/")
        self.session_hash = session_hash or uuid.uuid4().hex[:11]
        self.timeout = timeout
        self.config = httpx.get(f"{self.url}/config", timeout=60).json()
        self.ids = {c["props"].get("elem_id"): c["id"] for c in self.config["components"] if c["props"].get("elem_id")}

    def component(self, elem_id: str) -> dict:
        return next(c for c in self.config["components"] if c["id"] == self.ids[elem_id])

    def event(self, elem_id: str, trigger: str) -> dict:
        """The dependency that ``trigger`` (click, select, focus, ...) of the element starts."""
        target = self.ids[elem_id]
        return next(d for d in self.config["dependencies"] if [target, trigger] in [list(t) for t in d["targets"]])

    def call(self, elem_id: str, trigger: str, data: list, event_data: dict | None = None) -> dict:
        """Run the event with ``data`` (one value per input); ``{"data": [...]}`` on success,
        ``{"error": message}`` when the handler refused."""
        dependency = self.event(elem_id, trigger)
        assert len(data) == len(dependency["inputs"]), (elem_id, trigger, len(dependency["inputs"]))
        body = {
            "data": data,
            "fn_index": dependency["id"],
            "session_hash": self.session_hash,
            "event_data": event_data,
            "trigger_id": self.ids[elem_id],
        }
        with httpx.Client(timeout=self.timeout) as client:
            if not dependency.get("queue", True):
                r = client.post(f"{self.url}/gradio_api/run/predict", json=body)
                payload = r.json()
                if r.status_code != 200 or "error" in payload:
                    return {"error": str(payload.get("error"))}
                return {"data": payload["data"]}
            r = client.post(f"{self.url}/gradio_api/queue/join", json=body)
            r.raise_for_status()
            event_id = r.json()["event_id"]
            with client.stream(
                "GET", f"{self.url}/gradio_api/queue/data", params={"session_hash": self.session_hash}
            ) as s:
                for line in s.iter_lines():
                    if not line.startswith("data:"):
                        continue
                    message = json.loads(line[5:])
                    if message.get("event_id") != event_id or message.get("msg") != "process_completed":
                        continue
                    output = message.get("output") or {}
                    if not message.get("success"):
                        return {"error": str(output.get("error"))}
                    return {"data": output["data"]}
        raise AssertionError(f"no answer to {elem_id} {trigger}")
