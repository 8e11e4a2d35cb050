"""The I/O layer: sockets, TLS, timers and the event loop; it runs the actions the pure core returns."""
