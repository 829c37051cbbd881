"""Long jobs: the manager (create, run, resume, cancel, journal), executors, the image-stage base."""
