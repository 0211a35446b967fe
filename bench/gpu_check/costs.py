"""Stage ``costs``: each sampler's loss time relative to uniform (``bench/sampler_cost.py``: in-batch
candidates and a 16,384-candidate pool on CUDA), HCL's fused estimator against its two-logsumexp form
(``bench/hcl_estimator.py``) and each framework's training step relative to SimCLR
(``bench/framework_cost.py``), all with their CUDA defaults; tiny sizes in the dry run.
Each script runs in its own process under its own share of the stage's time.
"""
from __future__ import annotations

import os
import subprocess
import sys

import _shared

SCRIPTS = {
    "bench/sampler_cost.py": (["--batch", "72", "--pool", "512", "--iters", "1", "--rounds", "2"], 0.3),
    "bench/hcl_estimator.py": (["--anchors", "16", "--candidates", "30", "--iters", "1", "--rounds", "1"], 0.15),
    "bench/framework_cost.py": (["--backbone", "small_convnet", "--batch", "32", "--iters", "1", "--rounds", "1"], 1.0),
}


def ratios(text: str, column: int) -> dict[str, float]:
    """Row name -> the float in ``column`` of every Markdown table row of ``text`` that has one."""
    out = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) > column:
            try:
                out[cells[0]] = float(cells[column])
            except ValueError:
                pass
    return out


def main() -> int:
    section = _shared.Section("costs", "Costs: samplers vs uniform, frameworks vs SimCLR")
    status, outputs = 0, {}
    for script, (dry_args, share) in SCRIPTS.items():
        budget = max(10.0, share * (_shared.seconds_left() - 5))
        cmd = [sys.executable, script, *(dry_args if _shared.DRY else [])]
        print("$", " ".join(cmd), f"(timeout {budget:.0f} s)", flush=True)
        try:
            proc = subprocess.run(cmd, cwd=_shared.ROOT, env=os.environ, timeout=budget, capture_output=True, text=True)
            outputs[script] = proc.stdout
            print(proc.stderr[-3000:], file=sys.stderr)
            text = f"`{' '.join(cmd[1:])}` (exit {proc.returncode})\n\n{proc.stdout.strip()}"
            status = status or proc.returncode
        except subprocess.TimeoutExpired as err:
            out = err.stdout.decode() if isinstance(err.stdout, bytes) else (err.stdout or "")
            outputs[script] = out
            text = f"`{' '.join(cmd[1:])}`: TIMEOUT after {budget:.0f} s\n\n{out.strip()}"
            status = status or 124
        section.add(text)

    head = []
    samplers = ratios(outputs.get("bench/sampler_cost.py", ""), 5)  # the pool's "x uniform"
    batch = ratios(outputs.get("bench/sampler_cost.py", ""), 2)
    if samplers:
        worst = max((k for k in samplers if "mixing" not in k), key=samplers.get)
        head.append(f"sampler worst (not mixing) {worst}: {batch.get(worst, float('nan')):.2f}x batch, "
                    f"{samplers[worst]:.2f}x pool")
    frameworks = ratios(outputs.get("bench/framework_cost.py", ""), 2)
    if frameworks:
        slow = max(frameworks, key=frameworks.get)
        head.append(f"slowest framework {slow} {frameworks[slow]:.2f}x simclr")
    section.headline("; ".join(head) or "no table")
    return status


if __name__ == "__main__":
    sys.exit(main())
