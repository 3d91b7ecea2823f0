"""Synthetic camera scenes with ground truth: render to a video file or serve as an MJPEG stream.

A scene script (YAML, see ``simulators/scenarios/camera_*.yaml``) describes a textured
background with sensor noise and slow light drift, an optional swaying region (a tree), people-like
figures walking along timed paths, and incidents (lens covered or blinded, focus lost, camera
turned, stream cut). The ground truth of what happens when is derived from the same script and
the scene's camera config (zones, lines, schedules), so the two never disagree. ``score`` matches
an agent's events against it and reports precision and recall per event type.

Usage:
    python -m simulators.camera_scenes render SCENE.yaml --out DIR
    python -m simulators.camera_scenes serve SCENE.yaml --port 8554
"""

from __future__ import annotations

import argparse
import contextlib
import math
import socket
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from simulators.camera_script import SCENARIO_DIR as SCENARIO_DIR  # re-exported: callers load scenes from here
from simulators.camera_script import Figure, Incident
from simulators.camera_script import Scene as Scene
from simulators.camera_truth import write_truth

Image = npt.NDArray[np.uint8]


# ---------------------------------------------------------------------------- rendering

class SceneRenderer:
    """Draws the frames of a scene, deterministically from its seed."""

    def __init__(self, scene: Scene) -> None:
        self.scene = scene
        w, h = scene.size
        rng = np.random.default_rng(scene.seed)
        cv2.setRNGSeed(scene.seed + 1)
        # A world wider than the view so that a turned camera sees a different part of it.
        self._world = self._texture(rng, w * 3, h * 2)
        self._origin = (w, h // 2)
        self._sway_mask: Image | None = None
        if scene.sway is not None:
            mask = np.zeros((h, w), np.uint8)
            cv2.fillPoly(mask, [np.array(scene.sway, np.int32)], 255)
            self._sway_mask = mask
            self._foliage = self._foliage_texture(rng, w, h)

    def _texture(self, rng: np.random.Generator, w: int, h: int) -> Image:
        s = self.scene
        coarse = cv2.resize(rng.normal(0, 1, (h // 16, w // 16)).astype(np.float32), (w, h),
                            interpolation=cv2.INTER_CUBIC)
        fine = cv2.GaussianBlur(rng.normal(0, 1, (h, w)).astype(np.float32), (0, 0), 1.2)
        img = s.brightness + s.contrast * (0.6 * coarse + 0.5 * fine)
        for _ in range(w * h // 2500):
            # Buildings, windows, kerbs: hard edges give the view its sharpness and its identity.
            x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
            bw, bh = int(rng.integers(6, 40)), int(rng.integers(6, 40))
            shade = float(rng.normal(0, s.contrast))
            img[y:y + bh, x:x + bw] += shade
        gray = np.clip(img, 0, 255).astype(np.uint8)
        tint = np.stack([gray * 0.95, gray * 1.0, gray * 1.05], axis=-1)
        return np.clip(tint, 0, 255).astype(np.uint8)

    def _foliage_texture(self, rng: np.random.Generator, w: int, h: int) -> Image:
        blobs = cv2.GaussianBlur(rng.normal(0, 1, (h, w)).astype(np.float32), (0, 0), 2.0)
        g = np.clip(90 + 120 * blobs, 0, 255).astype(np.uint8)
        return np.stack([g // 2, g, g // 3], axis=-1)

    def _offset(self, t: float) -> tuple[int, int]:
        ox, oy = self._origin
        for inc in self.scene.incidents:
            if inc.type == "turn" and inc.start <= t < inc.end:
                ramp = min(1.0, (t - inc.start) / 0.8)
                ox += round(ramp * inc.params.get("dx", 200))
                oy += round(ramp * inc.params.get("dy", 0))
        return ox, oy

    def render(self, t: float) -> Image:
        """The frame at scene time ``t``."""
        s = self.scene
        w, h = s.size
        ox, oy = self._offset(t)
        frame = self._world[oy:oy + h, ox:ox + w].astype(np.float32)
        if self._sway_mask is not None:
            shift = s.sway_amplitude * math.sin(2 * math.pi * t / 1.7)
            m = np.array([[1, 0, shift], [0, 1, 0.4 * shift]], dtype=np.float32)
            foliage = cv2.warpAffine(self._foliage, m, (w, h), borderMode=cv2.BORDER_REFLECT)
            frame[self._sway_mask > 0] = foliage[self._sway_mask > 0]
        dx, dy = ox - self._origin[0], oy - self._origin[1]
        for fig in s.figures:
            foot = fig.foot(t)
            if foot is not None:
                self._draw_figure(frame, fig, foot[0] - dx, foot[1] - dy, t)
        gain = 1.0 + (s.drift_amplitude / max(s.brightness, 1.0)) * math.sin(2 * math.pi * t / s.drift_period_s)
        frame *= gain
        for inc in s.incidents:
            frame = self._incident(frame, inc, t)
        if s.noise > 0:
            # OpenCV's generator is several times faster than numpy's for a whole frame of noise.
            noise = np.empty_like(frame)
            cv2.randn(noise, 0.0, s.noise)  # type: ignore[call-overload]
            frame += noise
        return np.clip(frame, 0, 255).astype(np.uint8)

    @staticmethod
    def _draw_figure(frame: npt.NDArray[np.float32], fig: Figure, x: float, y: float, t: float) -> None:
        fw, fh = fig.size
        color = tuple(float(c) for c in fig.color)
        head = max(2, fh // 7)
        cx = round(x)
        top = round(y - fh)
        cv2.circle(frame, (cx, top + head), head, color, -1)
        cv2.rectangle(frame, (cx - fw // 2, top + 2 * head), (cx + fw // 2, round(y - fh * 0.42)), color, -1)
        swing = round(fw * 0.3 * math.sin(2 * math.pi * t * 1.8))
        hip = round(y - fh * 0.45)
        thick = max(2, fw // 4)
        cv2.line(frame, (cx - fw // 4, hip), (cx - fw // 4 + swing, round(y)), color, thick)
        cv2.line(frame, (cx + fw // 4, hip), (cx + fw // 4 - swing, round(y)), color, thick)

    @staticmethod
    def _incident(frame: npt.NDArray[np.float32], inc: Incident, t: float) -> npt.NDArray[np.float32]:
        if not inc.start <= t < inc.end:
            return frame
        ramp = min(1.0, (t - inc.start) / max(inc.params.get("ramp_s", 0.5), 1e-3))
        if inc.type in ("cover", "blind"):
            level = inc.params.get("level", 4.0 if inc.type == "cover" else 252.0)
            return frame * (1 - ramp) + level * ramp
        if inc.type == "defocus":
            sigma = max(0.1, ramp * inc.params.get("sigma", 4.0))
            return cv2.GaussianBlur(frame, (0, 0), sigma)  # type: ignore[return-value]
        return frame


def render_file(scene: Scene, out_dir: str | Path) -> tuple[Path, Path]:
    """Render a scene to ``{name}.mp4`` and its ground truth to ``{name}.truth.json``.

    Raises:
        ValueError: the scene has a stream cut, which a file cannot show (serve it instead).
    """
    if any(i.type == "cut" for i in scene.incidents):
        raise ValueError(f"scene {scene.name!r} cuts the stream; serve it with serve_stream()")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    video = out / f"{scene.name}.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter.fourcc(*"mp4v"), scene.fps, scene.size)
    if not writer.isOpened():
        raise RuntimeError("OpenCV cannot write mp4v video here")
    renderer = SceneRenderer(scene)
    try:
        for t in scene.frame_times():
            writer.write(renderer.render(t))
    finally:
        writer.release()
    truth_path = out / f"{scene.name}.truth.json"
    write_truth(scene, truth_path)
    return video, truth_path


# ---------------------------------------------------------------------------- streaming

class MjpegStreamServer:
    """Serves a scene in real time as an MJPEG-over-HTTP stream; a ``cut`` incident drops every client.

    During a cut, connections are accepted and closed at once, as a failed camera or NVR would.
    Scene time 0 is ``start()``; ``epoch`` gives it in epoch seconds for scoring.
    """

    BOUNDARY = b"vigilframe"

    def __init__(self, scene: Scene, host: str = "127.0.0.1", port: int = 0) -> None:
        self.scene = scene
        self._sock = socket.create_server((host, port))
        self.host, self.port = self._sock.getsockname()[:2]
        self.epoch = 0.0
        self._clients: list[socket.socket] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def url(self) -> str:
        """Where the agent reads the stream."""
        return f"http://{self.host}:{self.port}/stream.mjpg"

    def start(self) -> None:
        """Begin the scene now."""
        self.epoch = time.time()
        for target in (self._accept, self._produce):
            th = threading.Thread(target=target, daemon=True, name=f"mjpeg-{target.__name__}")
            th.start()
            self._threads.append(th)

    def wait(self) -> None:
        """Block until the scene has played out."""
        self._threads[1].join()

    def close(self) -> None:
        """Stop serving."""
        self._stop.set()
        self._sock.close()
        self._drop_all()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            if self.scene.cut(time.time() - self.epoch):
                conn.close()
                continue
            try:
                conn.settimeout(2.0)
                conn.recv(4096)
                conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: multipart/x-mixed-replace; boundary="
                             + self.BOUNDARY + b"\r\n\r\n")
            except OSError:
                conn.close()
                continue
            with self._lock:
                self._clients.append(conn)

    def _drop_all(self) -> None:
        with self._lock:
            for c in self._clients:
                with contextlib.suppress(OSError):
                    c.shutdown(socket.SHUT_RDWR)
                c.close()
            self._clients.clear()

    def _produce(self) -> None:
        renderer = SceneRenderer(self.scene)
        for t in self.scene.frame_times():
            delay = self.epoch + t - time.time()
            if self._stop.wait(max(0.0, delay)):
                return
            if self.scene.cut(t):
                self._drop_all()
                continue
            _ok, jpeg = cv2.imencode(".jpg", renderer.render(t), [cv2.IMWRITE_JPEG_QUALITY, 90])
            part = (b"--" + self.BOUNDARY + b"\r\nContent-Type: image/jpeg\r\nContent-Length: "
                    + str(len(jpeg)).encode() + b"\r\n\r\n" + jpeg.tobytes() + b"\r\n")
            with self._lock:
                for c in list(self._clients):
                    try:
                        c.sendall(part)
                    except OSError:
                        self._clients.remove(c)
                        c.close()
        self._drop_all()


def shipped_scenes() -> list[Path]:
    """The scene scripts shipped with Vigil."""
    return sorted(SCENARIO_DIR.glob("camera_*.yaml"))


def main(argv: list[str] | None = None) -> int:
    """Command line: render a scene to a file or serve it as a stream."""
    parser = argparse.ArgumentParser(prog="camera_scenes", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    rp = sub.add_parser("render", help="render scenes to MP4 + ground truth JSON")
    rp.add_argument("scenes", nargs="*", help="scene scripts (default: all shipped)")
    rp.add_argument("--out", default="var/camera-scenes")
    sp = sub.add_parser("serve", help="serve one scene as MJPEG over HTTP in real time")
    sp.add_argument("scene")
    sp.add_argument("--host", default="127.0.0.1")
    sp.add_argument("--port", type=int, default=8554)
    args = parser.parse_args(argv)
    if args.command == "render":
        for path in args.scenes or shipped_scenes():
            scene = Scene.load(path)
            if any(i.type == "cut" for i in scene.incidents):
                print(f"{scene.name}: stream scene, skipped (use serve)")
                continue
            video, truth = render_file(scene, args.out)
            print(f"{scene.name}: {video} {truth}")
        return 0
    scene = Scene.load(args.scene)
    server = MjpegStreamServer(scene, args.host, args.port)
    server.start()
    print(f"serving {scene.name} at {server.url} from epoch {server.epoch:.3f}", flush=True)
    try:
        server.wait()
    finally:
        server.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
