"""Camera analytics: motion, zones, tracking, intrusion, line crossing, loitering, crowd and camera health.

The modules here are pure cores (frames and timestamps in, decisions out) except
``source`` (OpenCV capture with reconnect) and ``evidence`` (the snapshot store), which are
the thin adapters the agent in ``edge.camera_agent`` wires together.
"""
