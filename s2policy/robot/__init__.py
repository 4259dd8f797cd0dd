"""Running a checkpoint on a robot: fixed-rate control, asynchronous chunk inference, safety."""
