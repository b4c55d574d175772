"""The simulator: networks, demand, a mesoscopic Numba traffic engine, emulated signal
controllers and detectors, and scoring. It stands in for roads and cabinets."""
