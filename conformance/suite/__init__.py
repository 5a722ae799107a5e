"""The suite: what is checked and how one check runs.

Configs and cases (`strategies`, `sizes`, `case`), the checks (`checks/`), the golden and the
plain reference (`reference`, `orders`), the tolerance model (`tolerance`, `conditioning`), the
engine that runs one check on one backend (`engine`, `calls`, `watchdog`, `process_state`,
`profiles`, `database`) and the controller's plan and records (`plan`, `rundir`, `recorder`).
"""
